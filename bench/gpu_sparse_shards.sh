#!/usr/bin/env bash
# bench/results/sparse_shards.json on a 2-GPU machine (run's kind nvidia-h100-x2): the exact
# learned-sparse engine on 1 and 2 GPUs over one 4M-document real-derived synthetic index (issue 27).
# Carry (ignored paths): .stage/lsr_seed (real splade-tiny vectors, written by any CPU run of
# bench_sparse_shards.py or bench_lsr_engines.py) and .stage/lsr_gpu/whl (this checkout as a wheel:
# pip wheel --no-deps --no-build-isolation -w .stage/lsr_gpu/whl .). Copy $OUT/sparse_shards.json to
# bench/results/ here. Per-device torch only: no NCCL, NVLink multicast stays off.
# Dry run here: PY=.venv/bin/python SITE=/tmp/shards_site SHARDS_ARGS="--cpu --docs 20000" OUT=/tmp/o \
#   bash bench/gpu_sparse_shards.sh
set -euo pipefail
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .stage/lsr_gpu/whl/*.whl
export PYTHONPATH="$SITE" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
$PY -c 'import sys, numpy, scipy, torch; print(sys.version.split()[0], numpy.__version__, scipy.__version__, torch.__version__, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
# shellcheck disable=SC2086  # SHARDS_ARGS is a list of flags
$PY bench/bench_sparse_shards.py --docs "${SHARDS_DOCS:-4000000}" --gpus 1 2 ${SHARDS_ARGS:-} \
    --results "$OUT/sparse_shards.json" 2>&1 | tee "$OUT/log.txt"
nvidia-smi --query-gpu=name,memory.used --format=csv > "$OUT/gpu.txt" 2>&1 || true
