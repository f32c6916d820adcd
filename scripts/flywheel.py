"""The data flywheel on a public set: a model trained on a few utterances serves the next ones as real traffic, a
reviewer labels some of them, and the model retrained with those labels is compared with the first.

1. Import the set (`tvcall data import`); keep the first `--seed-size` training utterances of a seeded shuffle as
   the seed data folder (the set's registry, dev and test splits) and the next `--traffic-size` as traffic.
2. Train on the seed data within `--minutes` (`tvcall train`), evaluate on the test split (`tvcall eval`).
3. Serve that run (`tvcall serve`, its traffic log on) and send it every traffic utterance over HTTP.
4. Hold the newest `--newest` requests out as a test of the newest traffic (their gold labels, exported as a test
   split). Review `--review` of the older ones twice, each into a copy of the log: those the review queue puts
   first, and a seeded random sample. The gold labels of the set are the reviewer's decisions, saved through
   `save_label`, the path `tvcall traffic review` and the demo's Review tab take.
5. Export each review whole as training data (`tvcall traffic export --split-shares 1,0,0`), retrain with the seed
   data plus the export under the same budget, evaluate every run on the set's test split and on the newest
   traffic, and compare each with the first run and with each other (`tvcall eval compare`, paired bootstrap).
   With `--warm-start` each retraining starts from the served model's adapter, and a control trained as long on
   the seed data alone tells the reviewed traffic's share of the gain from the extra training's.

Every stage is skipped when its output exists, so an interrupted run resumes where it stopped; `--seed-run` starts
from a seed run already trained on the seed data.

    .venv/bin/python scripts/flywheel.py                                   # SNIPS, 1,000 + 3,000, 300 reviewed, 20 min
    .venv/bin/python scripts/flywheel.py --seed-size 64 --traffic-size 60 --newest 10 --review 10 --minutes 1 --out runs/flywheel-smoke
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

from tvcall_steps import tvcall

from tvcall.data.record import Record, write_jsonl
from tvcall.data.splits import read_split
from tvcall.data.traffic import connect, logged, review_queue, save_label
from tvcall.eval.loadgen import drive, server_process
from tvcall.functions.registry import Registry, registry_for_data
from tvcall.run import RunDir

ORDERS = ("queue", "random")


def seed_folder(imported: Path, out: Path, size: int, traffic_size: int, seed: int) -> list[Record]:
    """The seed data folder (the first `size` of a seeded shuffle of train) and the traffic (the next ones)."""
    train = read_split(imported, "train")
    random.Random(seed).shuffle(train)
    if not (out / "manifest.json").exists():
        shutil.copytree(imported, out, dirs_exist_ok=True)
        write_jsonl(out / "train.jsonl", train[:size])
        manifest = json.loads((imported / "manifest.json").read_text())
        manifest["version"] = f"{manifest['version']}-seed{size}"
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return train[size:size + traffic_size]


def train_and_eval(run: Path, data: list[Path], minutes: float, init: Path | None = None) -> None:
    if not RunDir(run).predictions_file("test").exists():
        data_args = [arg for folder in data for arg in ("--data", str(folder))]
        init_args = ["--init-from", str(init)] if init else []
        tvcall("train", "--config", "cpu-default", *data_args, *init_args, "--out", str(run), "--set", f"max_train_minutes={minutes}",
               "--set", "num_train_examples=1000000", "--set", "num_train_epochs=20")  # the clock ends it, schedule decayed
        tvcall("eval", "--run", str(run))


def serve_traffic(run: Path, log: Path, traffic: list[Record], clients: int) -> None:
    if log.exists():
        return
    registry = registry_for_data(RunDir(run).data_dir() or Path("."))
    texts = [record.text for record in traffic]
    with server_process(["--run", str(run), "--traffic", str(log), "--max-queue", str(4 * clients), "--timeout", "120"]) as url:
        report = drive(url, registry, clients, duration_s=24 * 3600, max_requests=len(texts), texts=texts)  # each once
    print(f"served {report.ok} of {len(texts)} traffic utterances ({report.requests_per_s:.2f} req/s, p50 {report.p50_ms:.0f} ms)")


def review(log: Path, reviewed_log: Path, traffic: list[Record], registry: Registry, count: int, order: str, newest: int,
           seed: int) -> None:
    """Copy the log and apply the gold labels of `count` requests older than the newest `newest`: those the queue
    puts first, or a seeded random sample; order "newest" labels the newest `newest` themselves."""
    if reviewed_log.exists():
        return
    shutil.copy(log, reviewed_log)
    gold = {record.text: record for record in traffic}
    with connect(reviewed_log) as connection:
        items = logged(connection)
        older, latest = items[:len(items) - newest], items[len(items) - newest:]
        if order == "newest":
            chosen = latest
        elif order == "queue":
            chosen = review_queue(older)[:count]
        else:
            chosen = random.Random(seed).sample(older, min(count, len(older)))
        for item in chosen:
            record = gold[item.text]
            save_label(connection, registry, item.id, "review", record.function, record.arguments, record.spans, f"gold-{order}")
    print(f"{order}: reviewed {len(chosen)}; the router was wrong on "
          f"{sum((i.name, i.arguments) != (gold[i.text].function, gold[i.text].arguments) for i in chosen)} of them")


def export(run: Path, reviewed_log: Path, out: Path, shares: str) -> None:
    if not (out / "manifest.json").exists():
        tvcall("traffic", "export", "--run", str(run), "--log", str(reviewed_log), "--out", str(out), "--split-shares", shares)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="../shared/benchmarks/snips", help="the public set (JointBERT layout for bio)")
    parser.add_argument("--format", default="bio")
    parser.add_argument("--name", default="snips")
    parser.add_argument("--out", type=Path, default=Path("runs/flywheel"))
    parser.add_argument("--seed-size", type=int, default=1000)
    parser.add_argument("--traffic-size", type=int, default=3000)
    parser.add_argument("--review", type=int, default=300)
    parser.add_argument("--newest", type=int, default=300, help="the newest requests, held out as a test of the newest traffic")
    parser.add_argument("--warm-start", action="store_true", help="retrain from the seed run's adapter (`tvcall train "
                        "--init-from`), beside a control trained further on the seed data alone")
    parser.add_argument("--seed-run", type=Path, help="a run already trained on the seed data, to serve instead of training one")
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget of every run")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    imported = out / "imported"
    if not (imported / "manifest.json").exists():
        tvcall("data", "import", "--format", args.format, args.source, "--out", str(imported), "--name", args.name)
    seed_data = out / "seed-data"
    traffic = seed_folder(imported, seed_data, args.seed_size, args.traffic_size, args.seed)
    first = args.seed_run or out / "run-seed"
    train_and_eval(first, [seed_data], args.minutes)
    log = out / "traffic.sqlite"
    serve_traffic(first, log, traffic, args.clients)
    registry = registry_for_data(seed_data)

    newest = out / "export-newest"
    review(log, out / "traffic-newest.sqlite", traffic, registry, args.review, "newest", args.newest, args.seed)
    export(first, out / "traffic-newest.sqlite", newest, "0,0,1")
    init, suffix = (first, "-warm") if args.warm_start else (None, "")
    runs = {}
    if args.warm_start:  # the control: the same further training without the reviewed traffic
        runs["seed"] = out / "run-seed-warm"
        train_and_eval(runs["seed"], [seed_data], args.minutes, init)
    for order in ORDERS:
        reviewed_log, exported, run = out / f"traffic-{order}.sqlite", out / f"export-{order}", out / f"run-{order}{suffix}"
        review(log, reviewed_log, traffic, registry, args.review, order, args.newest, args.seed)
        export(first, reviewed_log, exported, "1,0,0")
        train_and_eval(run, [seed_data, exported], args.minutes, init)
        runs[order] = run
    for run in (first, *runs.values()):
        if not RunDir(run).predictions_file("test", newest).exists():
            tvcall("eval", "--run", str(run), "--data", str(newest))
    pairs = [(first, runs["queue"]), (first, runs["random"]), (runs["random"], runs["queue"])]
    if args.warm_start:
        pairs += [(runs["seed"], runs["queue"]), (runs["seed"], runs["random"])]
    for a, b in pairs:
        print(f"\n## {b.name} against {a.name}\n" + tvcall("eval", "compare", str(a), str(b), "--split", "test"), flush=True)
        print("\non the newest traffic:\n" + tvcall("eval", "compare", str(a), str(b), "--split", "test", "--data", str(newest)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
