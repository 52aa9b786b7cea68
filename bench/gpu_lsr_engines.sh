#!/usr/bin/env bash
# The H200 row of bench/results/lsr_engines.json for the real-derived synthetic collection (1M
# documents): exact-gpu, then the exact CPU engine, one batch of the first 256 SciFact test queries.
# Carry (ignored paths): .stage/lsr_seed (real splade-tiny vectors, written by a CPU run of
# bench_lsr_engines.py) and .stage/lsr_gpu/whl (this checkout as a wheel:
# pip wheel --no-deps --no-build-isolation -w .stage/lsr_gpu/whl .). The collection is regenerated
# there from the seed file; the fingerprint in $OUT/lsr_engines.json must equal the CPU run's.
# Dry run here: PY=.venv/bin/python SITE=/tmp/lsr_dry_site LSR_DOCS=20000 LSR_GPU_ENGINE=exact-torch OUT=/tmp/o bash bench/gpu_lsr_engines.sh
set -euo pipefail
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .stage/lsr_gpu/whl/*.whl
export PYTHONPATH="$SITE" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT"
$PY -c 'import sys, numpy, scipy, torch; print(sys.version.split()[0], numpy.__version__, scipy.__version__, torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())'
$PY bench/bench_lsr_engines.py --collection synthetic --docs "${LSR_DOCS:-1000000}" --queries 256 \
    --latency-queries 100 --engines "${LSR_GPU_ENGINE:-exact-gpu}" exact --tag h200 \
    --results "$OUT/lsr_engines.json" 2>&1 | tee "$OUT/log.txt"
nvidia-smi --query-gpu=name,memory.used --format=csv > "$OUT/gpu.txt" 2>&1 || true
