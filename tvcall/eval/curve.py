"""The learning curve: a run's checkpoints (`checkpoint_examples`, saved under RUN/checkpoints/) evaluated on the
records the run itself was evaluated on, with the run's own name prior and abstention bias, so that only the
adapter differs from point to point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvcall.data.record import Record, write_atomic
from tvcall.eval.plots import write_html_report
from tvcall.eval.runner import evaluate
from tvcall.run import RunDir

if TYPE_CHECKING:
    from tvcall.app.engine.hf_engine import TransformersEngine

CURVE_FILE = "learning_curve.json"


def examples_seen(run_dir: Path) -> int:
    """Training examples the run (or checkpoint) has seen: recorded for a checkpoint, else steps × batch."""
    run = RunDir(run_dir)
    summary, config = run.summary(), run.config()
    if summary.train_examples_seen:
        return summary.train_examples_seen
    batch = config.training_setting("per_device_train_batch_size") * config.training_setting("gradient_accumulation_steps")
    return summary.steps * batch


def checkpoint_runs(run_dir: Path) -> list[Path]:
    return [checkpoint.path for checkpoint in RunDir(run_dir).checkpoints()]


def curve_point(run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"train_examples": examples_seen(run_dir), "run": str(run_dir),
            **{key: metrics[key] for key in ("function_accuracy", "slot_f1", "exact_match")}}


def learning_curve(run_dir: Path, records: list[Record], eval_dir: Path, meta: dict[str, Any],
                   like: TransformersEngine) -> Path:
    """Evaluates every checkpoint of `run_dir` (no latency sample) routing as `like`, the run's engine, does (its
    name settings, entity linking and act threshold), adds the run's own point from `eval_dir`, and writes
    `eval_dir/learning_curve.json` and the HTML report with the curve drawn."""
    from tvcall.app.engine.hf_engine import TransformersEngine, release_freed_memory

    points = []
    for checkpoint in checkpoint_runs(run_dir):
        engine = TransformersEngine.from_run(checkpoint)
        engine.name_settings, engine.act_threshold = like.name_settings, like.act_threshold
        if engine.retriever is not None and like.retriever is not None:
            engine.retriever.linker = like.retriever.linker
        path = evaluate(engine, records, checkpoint / eval_dir.name, {**meta, "run": str(checkpoint)}, latency_sample=0)
        points.append(curve_point(checkpoint, json.loads(path.read_text())))
        del engine
        release_freed_memory()
    points.append(curve_point(run_dir, json.loads((eval_dir / "metrics.json").read_text())))
    points.sort(key=lambda p: p["train_examples"])
    path = eval_dir / CURVE_FILE
    write_atomic(path, json.dumps(points, indent=1) + "\n")
    write_html_report(eval_dir, points)
    return path
