#!/usr/bin/env bash
# Issue 22, part 3 on one GPU: the graphed decode's gpu tests, then bench/bench_decode.py -> $OUT/decode.json.
# Staging on the dev machine (.stage is git-ignored): pip wheel --no-deps --no-build-isolation -w .stage/dec .
# Device call: carry .stage/dec, command: bash bench/gpu_decode.sh <commit>   (DECODE_ARGS adds bench flags)
# Logs land in $OUT (gpu_tests.log, bench_decode.log); copy decode.json to bench/results/ on the dev machine.
set -uo pipefail
REPO=$PWD
rm -rf /tmp/site && pip install -q --no-index --no-deps --target /tmp/site .stage/dec/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
# The test file runs outside the checkout, so `import sparsa` finds the installed wheel, not the repo folders.
mkdir -p /tmp/gt && cp tests/kernels/test_graphed_generate.py tests/kernels/test_attention_ops.py /tmp/gt/
(cd /tmp/gt && timeout "${TEST_TIMEOUT:-200}" python -m pytest -q -m gpu -o addopts="" -p no:cacheprovider \
  test_graphed_generate.py test_attention_ops.py 2>&1 | tee "$OUT/gpu_tests.log")
(cd /tmp && timeout "${BENCH_TIMEOUT:-330}" python "$REPO/bench/bench_decode.py" --commit "${1:-}" \
  --out "$OUT/decode.json" ${DECODE_ARGS:-} 2>&1 | grep -v "Loading weights" | tee "$OUT/bench_decode.log")
