#!/usr/bin/env bash
# Reader latency per stage on the H200 (bench/results/rag.json["reader_h200"]). Run on the GPU machine
# from the repo root with .stage/rag carried:
#   .stage/rag/whl/sparsa-*.whl     this checkout as a wheel (pip wheel --no-deps --no-build-isolation -w .stage/rag/whl .)
#   .stage/rag/latency_set.json     questions + BM25 top-3 passages, written on the CPU by
#                                   `python bench/bench_rag.py latency` (the GPU machine has no Java)
#   SMOLLM2_DIR                     a folder holding the converted SmolLM2-135M-Instruct (safetensors +
#                                   tokenizer), e.g. $SPARSA_HOME/models/smollm2-135m-instruct staged on the machine
# Results land in $OUT/rag_reader_h200_*.json; merge them on the dev machine with
#   python bench/bench_rag.py merge --key reader_h200 --from-file rag_reader_h200_float32.json rag_reader_h200_bfloat16.json
# (bench/gpu_amar.sh runs this script after the Amar run, in the same call.)
set -euo pipefail
: "${SMOLLM2_DIR:?set SMOLLM2_DIR to the SmolLM2-135M-Instruct folder}"
pip install -q --no-index --no-deps --target /tmp/site .stage/rag/whl/sparsa-*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 SPARSA_HOME=/tmp/sparsa
export REPO=$PWD
cd /tmp  # import sparsa from the wheel, not the checkout
for dtype in float32 bfloat16; do
  python $REPO/bench/bench_rag.py latency --from-file $REPO/.stage/rag/latency_set.json --model "$SMOLLM2_DIR" \
      --device cuda --dtype $dtype --work /tmp/rag --out $OUT/rag_reader_h200_$dtype.json 2>&1 | tee $OUT/latency_$dtype.log
done
