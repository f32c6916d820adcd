"""llama.cpp beside the local fast path on one trained run, side by side in one run.

For each GGUF export (f16, q8_0, q4_k_m; written with `tvcall export --format gguf` where missing) its size, and, with
llama-cpp-python's OpenAI-compatible server on it (`--protocol llama.cpp`): route latency one utterance at a time,
interleaved utterance by utterance with the local fast path so that the machine's drift hits every engine alike, and
the share of calls identical to the local decoder's. Prints a table and writes OUT/llamacpp_bench.json and .md.

    python scripts/llamacpp_bench.py --run runs/cpu-default --utterances 100

Accuracy on the whole test split: `tvcall eval --backend remote --protocol llama.cpp --base-url URL --run RUN --out DIR`,
then `tvcall eval compare RUN/eval-test DIR`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

from tvcall.app.engine.hf_engine import TransformersEngine, set_threads
from tvcall.app.engine.llamacpp_server import llama_cpp_server
from tvcall.app.engine.remote_engine import OpenAIRemoteEngine
from tvcall.data.splits import read_split
from tvcall.eval.loadgen import percentile
from tvcall.run import RunDir
from tvcall.training.gguf_export import export_gguf

KINDS = ("f16", "q8_0", "q4_k_m")
WARMUP = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/cpu-default"))
    parser.add_argument("--utterances", type=int, default=100, help="test-split utterances, from the first")
    parser.add_argument("--threads", type=int, default=2, help="threads of each engine")
    parser.add_argument("--out", type=Path, help="default: RUN/llamacpp")
    args = parser.parse_args()
    run = RunDir(args.run)
    out = args.out or run.path / "llamacpp"
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind in KINDS:
        files[kind] = out / f"model-{kind}.gguf"
        if not files[kind].exists():
            print(f"exporting {files[kind]}", flush=True)
            export_gguf(run.path, files[kind], kind)
    data_dir = run.data_dir_at_hand()
    if data_dir is None:
        raise SystemExit(f"{run.path}: its data folder {run.data_dir()} is not here")
    texts = [record.text for record in read_split(data_dir, "test")[:args.utterances]]

    set_threads(args.threads)
    local = TransformersEngine.from_run(run.path)
    with ExitStack() as stack:
        engines: dict[str, object] = {"local fast path": local}
        for kind in KINDS:
            url = stack.enter_context(llama_cpp_server(files[kind], threads=args.threads))
            remote = OpenAIRemoteEngine(url, protocol="llama.cpp", registry=local.registry, top_objects=run.config().retrieval_top_objects)
            remote.use_run(run.path)
            engines[f"llama.cpp {kind}"] = remote
        for text in texts[:WARMUP]:
            for engine in engines.values():
                engine.route(text)  # type: ignore[attr-defined]
        latency: dict[str, list[float]] = {name: [] for name in engines}
        calls: dict[str, list[dict]] = {name: [] for name in engines}
        requests: dict[str, list[int]] = {name: [] for name in engines}
        for index, text in enumerate(texts):
            for name, engine in engines.items():
                started = time.perf_counter()
                result = engine.route(text)  # type: ignore[attr-defined]
                latency[name].append((time.perf_counter() - started) * 1000)
                calls[name].append(result.call())
                requests[name].append(int(result.stats.get("requests", 0)))
            print(f"\r{index + 1}/{len(texts)} utterances", end="", flush=True)
        print()

    rows = []
    for name in engines:
        kind = name.removeprefix("llama.cpp ")
        rows.append({
            "engine": name, "size_mb": round(files[kind].stat().st_size / 2**20, 1) if kind in files else None,
            "p50_ms": round(statistics.median(latency[name]), 1), "p95_ms": round(percentile(latency[name], 0.95), 1),
            "same_call_as_local": round(sum(a == b for a, b in zip(calls[name], calls["local fast path"], strict=True)) / len(texts), 3),
            "requests_per_utterance": round(statistics.mean(requests[name]), 2) if kind in files else None,
        })
    result = {"run": str(run.path), "utterances": len(texts), "threads": args.threads, "rows": rows}
    (out / "llamacpp_bench.json").write_text(json.dumps(result, indent=1))
    header = "| engine | GGUF size (MiB) | route p50 (ms) | route p95 (ms) | same call as local | requests per utterance |"
    lines = [header, "|---|---|---|---|---|---|"] + [
        f"| {r['engine']} | {r['size_mb'] or '–'} | {r['p50_ms']} | {r['p95_ms']} | {r['same_call_as_local']} | {r['requests_per_utterance'] or '–'} |"
        for r in rows]
    table = "\n".join(lines)
    (out / "llamacpp_bench.md").write_text(f"{len(texts)} test utterances one at a time, {args.threads} threads each\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
