"""`tvcall bench` (`make bench`): what constrained routing costs at registry scale, measured side by side in one run.

- grammar: a fresh process loads a registry (`full`: over 3,000 functions) and the tokenizer and builds the
  name stage's constraint, the token trie over every name (`grammar_ready_s`); then compiles every distinct
  argument schema with outlines into an empty cache, building outlines' vocabulary index first
  (`schemas_compile_s`), and loads them all again from it, as the next start-up does (`schemas_from_disk_cache_s`);
- the router under test readies its schemas as `tvcall serve` does at start-up (`router_schemas_ready_s`);
- retrieval: how often the gold function is among the name stage's candidates (recall@k objects), over the
  whole test split;
- latency: test-split utterances routed one at a time after warm-up, constrained (the router's path) and
  unconstrained (the same model and prompt, greedy over the whole vocabulary until the end of the answer),
  interleaved utterance by utterance so that the machine's drift hits both alike;
- agreement of the fast path with the reference transformers path on those utterances;
- throughput with 8 requests decoded together, as the router batches concurrent requests;
- outlines' naive set-up for comparison: one JSON schema, a union over the first N functions, compiled in a
  child process (time and peak memory), with a time limit.

Writes RUN/bench/bench.json and bench.md.
"""

from __future__ import annotations

import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tvcall.app.engine.hf_engine import TransformersEngine
from tvcall.app.engine.schema_guide import SchemaGuides
from tvcall.data.record import Record, write_atomic
from tvcall.eval.loadgen import percentile
from tvcall.functions.registry import named_registry
from tvcall.functions.retrieve import object_key
from tvcall.run import RunDir

BENCH_DIR = "bench"


@dataclass
class BenchConfig:
    run: Path
    data: Path
    registry: str = "full"
    utterances: int = 150
    warmup: int = 5
    concurrency: int = 8
    union_functions: int = 1000
    union_timeout_s: float = 300.0
    seed: int = 0


def _child(args: list[str], timeout_s: float) -> dict[str, Any]:
    """Run `python -m tvcall.eval.bench ARGS` in a fresh process; its last stdout line is a JSON object."""
    try:
        done = subprocess.run([sys.executable, "-m", "tvcall.eval.bench", *args], capture_output=True, text=True,
                              timeout=timeout_s, check=True)
    except subprocess.TimeoutExpired:
        return {"timed_out_after_s": timeout_s}
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"bench child {args} failed: {exc.stderr[-2000:]}") from None
    return json.loads(done.stdout.strip().splitlines()[-1])


def grammar_probe(registry_name: str, model: str) -> dict[str, Any]:
    """In this (fresh) process: the constraint's build times for a registry."""
    from tvcall.app.engine.decoder import ConstrainedDecoder
    from tvcall.model.load import load_tokenizer

    started = time.perf_counter()
    registry = named_registry(registry_name)
    loaded = time.perf_counter()
    tokenizer = load_tokenizer(model)
    tokenized = time.perf_counter()
    ConstrainedDecoder(None, tokenizer, registry)  # the name trie over every name (outlines' vocabulary: at the first compile)
    ready = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        schemas = SchemaGuides(tokenizer, registry, Path(folder)).compile_all()  # an empty cache: every one compiled
        compiled = time.perf_counter()
        SchemaGuides(tokenizer, registry, Path(folder)).compile_all()  # the next start-up: all from disk
        loaded_again = time.perf_counter()
    return {"functions": len(registry), "registry_load_s": round(loaded - started, 3),
            "tokenizer_load_s": round(tokenized - loaded, 3), "grammar_ready_s": round(ready - tokenized, 3),
            "distinct_argument_schemas": schemas, "schemas_compile_s": round(compiled - ready, 3),
            "schemas_from_disk_cache_s": round(loaded_again - compiled, 3),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def union_probe(functions: int, model: str) -> dict[str, Any]:
    """Outlines' obvious set-up: one JSON schema, a union over `functions` functions' calls, compiled to an index."""
    from outlines_core import Index
    from outlines_core.json_schema import build_regex_from_schema

    from tvcall.app.engine.guided import call_schema
    from tvcall.app.engine.schema_guide import outlines_vocabulary
    from tvcall.model.load import load_tokenizer

    registry = named_registry("core")
    vocabulary = outlines_vocabulary(load_tokenizer(model))
    union = {"anyOf": [call_schema(registry, name) for name in registry.names[:functions]]}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    Index(build_regex_from_schema(json.dumps(union)), vocabulary)
    return {"functions": functions, "compile_s": round(time.perf_counter() - started, 2),
            "added_peak_rss_gib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2**20, 3)}


def unconstrained(engine: TransformersEngine, text: str, max_new_tokens: int = 64) -> tuple[str, float]:
    """Greedy decoding over the whole vocabulary with the engine's own model and prompt, until the end of turn;
    (answer, milliseconds including retrieval, as the constrained route's latency does)."""
    started = time.perf_counter()
    lm, eos = engine.decoder.lm, engine.tokenizer.eos_token_id
    stream = lm.open(engine.prompt(text))  # the same retrieval work as the routed call
    tokens: list[int] = []
    try:
        step: list[int] = []
        while len(tokens) < max_new_tokens:
            hidden = lm.forward([stream], [step])[0]
            token = int(torch.argmax(lm.logits(hidden) if hasattr(lm, "logits") else hidden))
            if token == eos:
                break
            tokens.append(token)
            step = [token]
    finally:
        lm.close(stream)
    return engine.tokenizer.decode(tokens), (time.perf_counter() - started) * 1000


@dataclass
class LatencySamples:
    """Per-utterance timings of the constrained and unconstrained paths, taken interleaved."""
    constrained_ms: list[float]
    unconstrained_ms: list[float]
    unconstrained_valid: int
    correct: int

    @property
    def ratio(self) -> float:
        return statistics.median(self.constrained_ms) / statistics.median(self.unconstrained_ms)

    def summary(self) -> dict[str, Any]:
        count = len(self.constrained_ms)
        return {"route_ms_p50": round(statistics.median(self.constrained_ms), 1),
                "route_ms_p95": round(percentile(self.constrained_ms, 0.95), 1),
                "unconstrained_ms_p50": round(statistics.median(self.unconstrained_ms), 1),
                "unconstrained_ms_p95": round(percentile(self.unconstrained_ms, 0.95), 1),
                "constrained_vs_unconstrained_ratio": round(self.ratio, 3),
                "unconstrained_json_valid_rate": round(self.unconstrained_valid / count, 4),
                "exact_match_sample": round(self.correct / count, 4)}


def latency_samples(engine: TransformersEngine, records: list[Record], warmup: int) -> LatencySamples:
    for record in records[:warmup]:
        engine.route(record.text)
        unconstrained(engine, record.text)
    samples = LatencySamples([], [], 0, 0)
    for record in tqdm(records, desc="latency (one at a time)", unit="utt"):
        result = engine.route(record.text)
        samples.constrained_ms.append(result.latency_ms)
        samples.correct += (result.name, result.arguments) == (record.function, record.arguments)
        answer, ms = unconstrained(engine, record.text)
        samples.unconstrained_ms.append(ms)
        samples.unconstrained_valid += _parses(answer)
    return samples


def _parses(answer: str) -> bool:
    try:
        return isinstance(json.loads(answer), dict)
    except json.JSONDecodeError:
        return False


def throughput(engine: TransformersEngine, records: list[Record], concurrency: int) -> dict[str, Any]:
    texts = [r.text for r in records]
    started = time.perf_counter()
    for text in texts:
        engine.route(text)
    alone_s = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, len(texts), concurrency):
        engine.route_batch(texts[start:start + concurrency])
    together_s = time.perf_counter() - started
    return {f"throughput_rps_{concurrency}_concurrent": round(len(texts) / together_s, 2),
            "throughput_rps_one_at_a_time": round(len(texts) / alone_s, 2),
            "concurrency": concurrency}


def retrieval_recall(engine: TransformersEngine, records: list[Record]) -> dict[str, Any]:
    """How often the retriever keeps the gold function among the name stage's candidates (its top-k objects'
    functions), and ranks its object first, over the in-scope utterances; no retriever: every name is a candidate."""
    in_scope = [r for r in records if r.function is not None]
    if engine.retriever is None or not engine.top_objects or not in_scope:
        return {"retrieval_top_objects": None, "retrieval_recall_at_k": 1.0 if in_scope else None, "retrieval_top1_object": None}
    kept = first = 0
    for record in in_scope:
        found = engine.retriever.retrieve(record.text, engine.top_objects)
        kept += record.function in found.functions
        first += bool(found.objects) and found.objects[0] == object_key(record.function)
    return {"retrieval_top_objects": engine.top_objects, "retrieval_recall_at_k": round(kept / len(in_scope), 4),
            "retrieval_top1_object": round(first / len(in_scope), 4), "retrieval_utterances": len(in_scope)}


def agreement(engine: TransformersEngine, reference: TransformersEngine, records: list[Record]) -> float:
    same = 0
    for record in tqdm(records, desc="reference path", unit="utt"):
        fast, ref = engine.route(record.text), reference.route(record.text)
        same += (fast.name, fast.arguments) == (ref.name, ref.arguments)
    return round(same / len(records), 4)


def bench(config: BenchConfig) -> Path:
    from tvcall.data.splits import read_split

    model = RunDir(config.run).config().model
    grammar = _child(["--grammar-probe", config.registry, "--model", model], timeout_s=600)
    union = _child(["--union-probe", str(config.union_functions), "--model", model], timeout_s=config.union_timeout_s)

    registry = named_registry(config.registry)
    engine = TransformersEngine.from_run(config.run, registry=registry)
    schemas_ready_s = engine.ready_schemas()  # as `tvcall serve` does at start-up (from the disk cache once compiled)
    test = read_split(config.data, "test")
    records = random.Random(config.seed).sample(test, min(config.utterances, len(test)))
    recall = retrieval_recall(engine, test)  # the whole test split: retrieval takes milliseconds
    timings = latency_samples(engine, records, config.warmup).summary()
    rates = throughput(engine, records, config.concurrency)
    router_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the reference engine's second model
    reference = TransformersEngine.from_run(config.run, registry=registry, backend="hf")
    result = {
        "run": str(config.run), "data": str(config.data), "registry": config.registry, "registry_functions": len(registry),
        "grammar_ready_s": grammar.get("grammar_ready_s"), "grammar": grammar,
        "router_schemas_ready_s": round(schemas_ready_s, 3),
        **recall, **timings, **rates,
        "fast_vs_reference_agreement": agreement(engine, reference, records),
        "naive_union_compile_s": union.get("compile_s"), "naive_union": union,
        "router_peak_rss_gib": round(router_rss / 2**20, 3),
        "utterances": len(records), "threads": torch.get_num_threads(),
    }
    out = Path(config.run) / BENCH_DIR
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "bench.json", json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    write_atomic(out / "bench.md", bench_markdown(result))
    return out / "bench.json"


def bench_markdown(result: dict[str, Any]) -> str:
    rows = [(k, v) for k, v in result.items() if not isinstance(v, dict)]
    rows += [(f"{group}.{k}", v) for group in ("grammar", "naive_union") for k, v in result[group].items()]
    return "# tvcall bench\n\n| measure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="bench child processes (tvcall bench runs them)")
    parser.add_argument("--grammar-probe")
    parser.add_argument("--union-probe", type=int)
    parser.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    if args.grammar_probe:
        print(json.dumps(grammar_probe(args.grammar_probe, args.model)))
    elif args.union_probe:
        print(json.dumps(union_probe(args.union_probe, args.model)))


if __name__ == "__main__":
    main()
