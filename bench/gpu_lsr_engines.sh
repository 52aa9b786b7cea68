#!/usr/bin/env bash
# The H200 rows of bench/results/lsr_engines.json. Carry .stage/gpu_eng (sparsa and pyseismic-lsr
# cp312 wheels), .stage/scifact-splade-tiny and .stage/scifact-splade-tiny-queries.npz (written by
# a CPU run of bench_lsr_engines.py). The synthetic 1M collection is generated on the GPU.
set -euo pipefail
pip install -q --no-index --no-deps --target /tmp/site .stage/gpu_eng/whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python bench/bench_lsr_engines.py --collection scifact --engines exact seismic exact-gpu --tag h200
python bench/bench_lsr_engines.py --collection synthetic --docs 1000000 --latency-queries 100 \
    --engines exact seismic exact-gpu --tag h200
cp bench/results/lsr_engines.json $OUT/
nvidia-smi --query-gpu=name,memory.used --format=csv > $OUT/gpu.txt
