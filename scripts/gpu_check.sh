#!/usr/bin/env bash
# The GPU check, one prepared script for a GPU machine without network: a random Qwen2 of about 490M parameters
# built from a config with the genuine Qwen tokenizer (nothing downloaded), 20 QLoRA steps then 20 LoRA steps
# through `tvcall train`'s code with the qwen2.5-7b-qlora / -lora presets' settings, tokens/s and peak GPU
# memory beside `tvcall plan`, then constrained decoding with each trained adapter.
#
#   bash scripts/gpu_check.sh                 # on the GPU machine; writes $OUT (or runs/gpu-check)
#   bash scripts/gpu_check.sh --cpu-smoke     # here: the tiny stand-in, 2 steps each, on the CPU
#
# Packages the GPU machine's Python lacks travel as wheels in .whl/ (made here by scripts/gpu_wheels.sh);
# they are installed into /tmp/site. Exit status 0: every step ran and every decoded call was valid.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
if [ -d .whl ] && [ "$PY" = python3 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT_DIR="${OUT:-runs/gpu-check}"  # only the log and gpu_check.json go here; model, data and runs go to WORK
WORK="${GPU_CHECK_WORK:-$([ -n "${OUT:-}" ] && echo /tmp/gpu-check || echo "$OUT_DIR/work")}"
mkdir -p "$OUT_DIR" "$WORK"
LOG="$OUT_DIR/gpu_check.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$LOG" || true
"$PY" scripts/gpu_check.py --out "$WORK" "$@" 2>&1 | tee -a "$LOG" || status=$?
"$PY" -m tvcall.cli plan --model qwen2.5-7b 2>&1 | grep -v Warning | tee -a "$LOG" || true
cp "$WORK/gpu_check.json" "$OUT_DIR/" 2>/dev/null || true
exit "${status:-0}"
