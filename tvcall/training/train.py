"""Fine-tune: load config → build data → build model → SFTTrainer.train() → save the run folder."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from torch.optim.lr_scheduler import LambdaLR
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl import SFTConfig, SFTTrainer

from tvcall.data.prompt import PROMPT_FORMAT, split_context, training_example
from tvcall.data.record import Record, write_atomic
from tvcall.data.splits import read_manifest, read_split
from tvcall.errors import InputError
from tvcall.functions.registry import DATA_CATALOG_DIR, Registry, default_registry, registry_for_data
from tvcall.functions.retrieve import Retriever, fit_classifier
from tvcall.model.build import build_model, state_bytes
from tvcall.model.load import cpu_bf16_native, load_tokenizer
from tvcall.run import DEFAULT_TOP_OBJECTS, RunConfig, RunDir, TrainSummary
from tvcall.training.config import deepspeed_path, with_settings


class TimeBudget(TrainerCallback):
    """Stop training once `minutes` of training are spent; the model trained so far is still saved."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self.start = time.monotonic()
        self.stopped_at_step: int | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.start = time.monotonic()

    def spent(self) -> float:
        """The share of the budget spent so far (0 with no budget)."""
        return (time.monotonic() - self.start) / self.seconds if math.isfinite(self.seconds) else 0.0

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.spent() >= 1.0:
            control.should_training_stop = True
            self.stopped_at_step = state.global_step


def clear_stale_outputs(run: RunDir) -> None:
    """What an earlier run in this folder left that describes its own adapter: the calibration (the eval would keep
    it rather than choose one for the new adapter) and its checkpoints (the learning curve would mix them in)."""
    run.calibration_file.unlink(missing_ok=True)
    shutil.rmtree(run.checkpoints_dir, ignore_errors=True)


class ExampleCheckpoints(TrainerCallback):
    """Saves the adapter once `counts` training examples have been seen, each in a run folder of its own under
    RUN/checkpoints/ (`link_checkpoints` completes them after training), for `tvcall eval --curve`."""

    def __init__(self, run: RunDir, counts: list[int]) -> None:
        self.run, self.pending = run, sorted(counts)
        self.saved: dict[int, int] = {}  # examples → step

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        seen = state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        while self.pending and seen >= self.pending[0] and not control.should_training_stop:
            examples = self.pending.pop(0)
            if state.is_world_process_zero:
                kwargs["model"].save_pretrained(str(self.run.checkpoint(examples).adapter_dir))
            self.saved[examples] = state.global_step


def link_checkpoints(run: RunDir, saved: dict[int, int], config: RunConfig, summary: TrainSummary) -> None:
    """Each checkpoint becomes a run folder: the run's config with its own count of examples and a link to the run's
    classifier (the curve varies the adapter alone)."""
    for examples, step in saved.items():
        checkpoint = run.checkpoint(examples)
        checkpoint.write(dataclasses.replace(config, output_dir=str(checkpoint.path)),
                         dataclasses.replace(summary, train_examples_seen=examples, steps=step))
        if run.classifier_file.exists():
            checkpoint.classifier_file.unlink(missing_ok=True)
            checkpoint.classifier_file.symlink_to(Path("..", "..", run.classifier_file.name))


BUDGET_SCHEDULES = ("cosine", "linear")


def budget_schedule(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int,
                    budget: TimeBudget) -> LambdaLR:
    """A cosine or linear decay whose progress is the larger of the steps done and the time budget spent, so that
    a run the budget stops ends with its learning rate decayed all the same, however fast the machine (a step
    schedule cut off by the clock ends at a high rate, with the low-rate steps that settle the model never run)."""

    warmup = warmup_steps / max(1, total_steps)  # warm-up too is a share of the run, on the same clock

    def factor(step: int) -> float:
        progress = min(1.0, max(step / max(1, total_steps), budget.spent()))
        if progress < warmup:
            return progress / warmup
        decayed = (progress - warmup) / max(1e-9, 1.0 - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * decayed)) if kind == "cosine" else 1.0 - decayed

    return LambdaLR(optimizer, factor)


class BudgetScheduled(SFTTrainer):
    """SFTTrainer whose cosine/linear schedule runs on the time budget's clock too (`budget_schedule`)."""

    budget: TimeBudget | None = None

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        if self.lr_scheduler is None and self.budget is not None and self.args.lr_scheduler_type in BUDGET_SCHEDULES:
            self.lr_scheduler = budget_schedule(optimizer or self.optimizer, self.args.lr_scheduler_type,
                                                self.args.get_warmup_steps(num_training_steps), num_training_steps,
                                                self.budget)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)


def answer_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over the answer tokens, their next-token accuracy), the LM head run on those tokens only."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.get_decoder()(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                                     use_cache=False).last_hidden_state
    labels = inputs["labels"][:, 1:]
    answer = labels != -100
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][answer]).float()
    targets = labels[answer]
    count = num_items_in_batch if num_items_in_batch is not None else answer.sum().clamp(min=1)
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum") / count
    return loss, (logits.detach().argmax(-1) == targets).float().mean()


class AnswerLossTrainer(BudgetScheduled):
    """SFTTrainer whose loss runs the LM head over the answer tokens only (`answer_loss`). trl's fused head skips
    the prompt positions only where Triton runs (GPU); on CPU it projects every position onto the 49k-token
    vocabulary with fp32 accumulation, though about a fifth of the tokens are the answer."""

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss, accuracy = answer_loss(model, inputs, num_items_in_batch)
        self._metrics["train"]["mean_token_accuracy"].append(accuracy.item())
        return (loss, {}) if return_outputs else loss


def training_subset(records: list[Record], size: int, seed: int, weights: list[float] | None = None) -> list[Record]:
    """A seeded sample of `size` records, without replacement, spread over phrasings and functions.

    In round k a record is taken only while its template has fewer than k records taken and its function fewer
    than k × the record's weight (1 without `weights`), so each is seen once before any is seen twice (a random
    sample of 2,400 from 20,000 left about half the phrasings unseen) and a function of weight 2 gets two of its
    phrasings a round. Records without a template (imported data, out of scope) count their text as their phrasing.
    """
    rng = random.Random(seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    size = min(size, len(records))
    taken = [False] * len(records)
    per_phrasing: Counter[str] = Counter()
    per_function: Counter[str] = Counter()
    chosen: list[Record] = []
    level = 0
    while len(chosen) < size:
        level += 1
        for i in order:
            record = records[i]
            phrasing = record.template or record.text
            function = record.function or phrasing  # out of scope: each text is its own
            cap = level * (weights[i] if weights is not None else 1.0)
            if taken[i] or per_phrasing[phrasing] >= level or per_function[function] >= cap:
                continue
            taken[i] = True
            per_phrasing[phrasing] += 1
            per_function[function] += 1
            chosen.append(record)
            if len(chosen) == size:
                break
    return chosen


def own_template_weights(records: list[Record], weight: float, registry: Registry | None = None) -> list[float]:
    """`weight` for functions with their own templates (one-off functions, learnt one by one: each has only its
    own phrasings to learn from), 1 for family functions, which share their kind's phrasings with hundreds of
    others; out of scope counts as family."""
    registry = registry or default_registry()
    return [weight if r.function and registry[r.function].templates is not None else 1.0 for r in records]


def build_dataset(tokenizer: Any, records: list[Record], top_objects: int = DEFAULT_TOP_OBJECTS,
                  retriever: Retriever | None = None, registry: Registry | None = None) -> Dataset:
    """Tokenised examples; each prompt lists the `top_objects` objects retrieved for its text, as at serving time
    (0: the command alone). Answers give the arguments in parameter order, whatever order the record has them in
    (imported records keep the utterance's)."""
    registry = registry or default_registry()
    if top_objects and retriever is None:
        retriever = Retriever(registry)
    if retriever is not None:
        retriever.read_context = split_context  # a follow-up's prompt lists the objects serving lists for it
    rows = []
    for r in records:
        options = retriever.retrieve(r.text, top_objects, must_include=r.function).options if retriever and top_objects else []
        arguments = registry[r.function].in_parameter_order(r.arguments) if r.function else r.arguments
        rows.append(training_example(tokenizer, r.text, r.function, arguments, options))
    return Dataset.from_list(rows)


def train_retriever(registry: Registry, train_split: list[Record], seed: int, run: RunDir) -> Retriever:
    """BM25 over `registry` plus a function classifier fitted on the whole training split (seconds) and saved in
    the run folder, where `run_classifier` finds it. A split with a single label has nothing to classify and keeps
    BM25 alone."""
    if len({r.function for r in train_split}) < 2:
        run.classifier_file.unlink(missing_ok=True)  # one left by an earlier run in this folder would be loaded
        return Retriever(registry)
    classifier = fit_classifier([(r.text, r.function) for r in train_split], seed)
    classifier.save(run.classifier_file)
    return Retriever(registry, classifier)


def decoder_linear_names(model: torch.nn.Module) -> list[str]:
    """What peft's `all-linear` means, spelled out: the linear layers inside the decoder blocks."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and ".layers." in name})


def lora_config(config: RunConfig, model: torch.nn.Module | None = None) -> LoraConfig:
    """`lora_top_layers`: adapters on the last N decoder layers only, so the backward pass stops below them."""
    settings: dict[str, Any] = {"task_type": "CAUSAL_LM", **config.lora}
    if config.lora_top_layers:
        if model is None:
            raise ValueError("lora_top_layers needs the model to count its layers")
        total = model.config.num_hidden_layers
        settings["layers_to_transform"] = list(range(max(0, total - config.lora_top_layers), total))
        if settings.get("target_modules") == "all-linear":
            settings["target_modules"] = decoder_linear_names(model)
    return LoraConfig(**settings)


# SFTConfig fields tvcall sets for every run; a preset may still override any of them
TRAINER_BASE: dict[str, Any] = {
    "report_to": ["tensorboard"], "save_strategy": "no", "completion_only_loss": True, "max_length": None,
    "train_sampling_strategy": "group_by_length", "dataloader_num_workers": 0,
    "disable_tqdm": False,  # the progress bar, even where the CLI quiets transformers' logging (its default follows that level)
}


def training_args(config: RunConfig, run: RunDir) -> SFTConfig:
    """The trainer's settings: tvcall's fixed ones, then the preset's `trainer` fields, passed through unchanged."""
    settings = {**TRAINER_BASE, "use_cpu": not torch.cuda.is_available(), **config.trainer,
                "output_dir": str(run.trainer_dir), "seed": config.seed}
    if settings.get("deepspeed"):
        settings["deepspeed"] = deepspeed_path(settings["deepspeed"])
    return SFTConfig(**settings)


HALF_DTYPES = ("bfloat16", "float16")


def on_this_machine(config: RunConfig, gpu: bool | None = None, bf16_native: bool | None = None) -> RunConfig:
    """The config as this machine runs it: a CPU without native bf16 trains in fp32 (bf16 autocast and 16-bit
    weights are emulated there, 29× slower a step: `cpu_bf16_native`). The resolved config.yaml records it."""
    gpu = torch.cuda.is_available() if gpu is None else gpu
    native = cpu_bf16_native() if bf16_native is None else bf16_native
    bf16 = config.training_setting("bf16")
    if gpu or native or not (bf16 or config.dtype in HALF_DTYPES) or config.method == "qlora":
        return config
    print(f"tvcall train: this CPU has no native bf16 (AVX512-BF16/AMX): training in float32, not bf16={bf16} "
          f"dtype={config.dtype}", file=sys.stderr)
    return with_settings(config, bf16=False, dtype="float32" if config.dtype in HALF_DTYPES else config.dtype)


def checked_against(registry: Registry, records: list[Record], path: Path) -> list[Record]:
    """Records of another data folder, each naming a function of the run's registry (else an error naming it)."""
    for number, record in enumerate(records, start=1):
        if record.function is not None and record.function not in registry:
            raise InputError(path, number, "function", f"{record.function!r} is not in the registry of the run's data_dir")
    return records


ADAPTER_METHODS = ("lora", "qlora")  # the methods that train a LoRA adapter rather than the whole model


def warm_start(config: RunConfig) -> RunConfig:
    """With `init_adapter`, the run's LoRA settings become that run's, whose adapter training starts from; it must
    have one, on the same base model."""
    if not config.init_adapter:
        return config
    init = RunDir(config.init_adapter)
    if config.method not in ADAPTER_METHODS or not init.has_adapter:
        raise InputError(init.path, None, "init_adapter", f"needs a LoRA adapter to start from (in {init.adapter_dir}) "
                         f"and a lora or qlora run (this one is {config.method})")
    started_from = init.config()
    if started_from.model != config.model:
        raise InputError(init.config_file, None, "model", f"{started_from.model}, not this run's {config.model}")
    return dataclasses.replace(config, lora=started_from.lora, lora_top_layers=started_from.lora_top_layers)


def train(config: RunConfig) -> Path:
    config = warm_start(on_this_machine(config))
    torch.manual_seed(config.seed)
    run = RunDir(config.output_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    clear_stale_outputs(run)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.tensorboard_dir)
    data_dir = Path(config.data_dir)  # recorded in config.yaml as data_dir: serving loads the same registry from it
    manifest = read_manifest(data_dir)
    registry = registry_for_data(data_dir)  # an imported benchmark's own functions, else the shipped registry
    train_split = read_split(data_dir, "train")
    versions = [manifest["version"]]
    for extra in map(Path, config.extra_data_dirs or []):
        versions.append(read_manifest(extra)["version"])
        train_split += checked_against(registry, read_split(extra, "train"), extra / "train.jsonl")
    weights = own_template_weights(train_split, config.own_template_weight, registry) if config.own_template_weight != 1.0 else None
    records = training_subset(train_split, config.num_train_examples, config.seed, weights)

    tokenizer = load_tokenizer(config.model)
    # the whole training split teaches the retriever; the LLM sees the subset its budget allows
    retriever = train_retriever(registry, train_split, config.seed, run) if config.retrieval_top_objects else None
    dataset = build_dataset(tokenizer, records, config.retrieval_top_objects if config.prompt_options else 0, retriever, registry)
    budget = TimeBudget(config.max_train_minutes or math.inf)
    checkpoints = ExampleCheckpoints(run, config.checkpoint_examples or [])
    args = training_args(config, run)
    model = build_model(config)  # after SFTConfig: under DeepSpeed ZeRO-3 the weights load already partitioned
    peft_config = None  # full training, or an adapter already on the model
    if config.init_adapter:
        model = PeftModel.from_pretrained(model, RunDir(config.init_adapter).adapter_dir, is_trainable=True)
    elif config.method in ADAPTER_METHODS:
        peft_config = lora_config(config, model)
    # on a GPU trl's fused head already skips the prompt positions (and DeepSpeed/parallel set-ups keep its path)
    trainer_class = BudgetScheduled if torch.cuda.is_available() else AnswerLossTrainer
    trainer = trainer_class(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
        callbacks=[budget, checkpoints],
    )
    trainer.budget = budget if config.max_train_minutes else None
    started = time.monotonic()
    result = trainer.train()
    minutes = (time.monotonic() - started) / 60

    # adapter + tokenizer (full: the whole model, in the run folder itself); every process calls this so that
    # ZeRO-3 can gather its shards, the main process writes
    trainer.save_model(str(run.path if config.method == "full" else run.adapter_dir))
    if not trainer.is_world_process_zero():
        return run.path
    summary = TrainSummary(
        prompt_format=PROMPT_FORMAT, data_version="+".join(versions), data_registry=(data_dir / DATA_CATALOG_DIR).exists(),
        registry_functions=len(registry), train_examples=len(records),
        followup_examples=sum(split_context(r.text)[0] is not None for r in records),
        tokens=int(sum(len(ids) for ids in dataset["input_ids"])),
        steps=trainer.state.global_step, stopped_by_time_budget_at_step=budget.stopped_at_step,
        train_minutes=round(minutes, 2), train_loss=result.training_loss,
        params_trainable=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        param_bytes=state_bytes(trainer.model),
        peak_gpu_memory_gb=round(torch.cuda.max_memory_allocated() / 1e9, 3) if torch.cuda.is_available() else None,
    )
    run.write(config, summary)
    link_checkpoints(run, checkpoints.saved, config, summary)
    write_atomic(run.train_log_file, "".join(json.dumps(h) + "\n" for h in trainer.state.log_history))
    return run.path
