#!/usr/bin/env bash
# Retrieve-or-recall routing with Qwen2.5-Coder-1.5B-Instruct as the reader: the generation step on the
# H200 (bench/bench_rag.py routing --step generate; rag.json["routing_qwen1.5b"] once reported here),
# then the reader's per-stage latency with Qwen. Run on the GPU machine from the repo root, with .stage/qr
# carried:
#   .stage/qr/routing_set.json   1,000 questions (200 per source) with BM25 top-3 passages and corpus
#                                features, written here (Java) by
#       python bench/bench_rag.py routing --step set --per-source 200 --work /tmp/rag/bench2 \
#           --set-out .stage/qr/routing_set.json
#   .stage/qr/latency_set.json   cp .stage/rag/latency_set.json .stage/qr/   (8 questions + passages)
# and there:
#   PYTHONPATH=/tmp/site_q       this checkout's wheel installed (it must have Reader.answer_batch)
#   QWEN_DIR                     the converted Qwen folder (float32 safetensors + tokenizer)
#   $OUT                         gets qwen_generations.jsonl (+ .summary.json), rag_reader_h200_qwen.json, logs
#   (QR_SET, QR_LATENCY_SET, QR_DEVICE, QR_DTYPE override the defaults, e.g. for a CPU dry run on a tiny set)
# Then here, with the fetched files copied to .stage/qr/out/:
#   python bench/bench_rag.py routing --step report --from-file .stage/qr/routing_set.json \
#       --cache .stage/qr/out/qwen_generations.jsonl --model-key qwen2.5-coder-1.5b-instruct \
#       --device cuda --dtype bfloat16 --key routing_qwen1.5b --work /tmp/rag/qwen
#   python bench/bench_rag.py merge --key reader_h200_qwen --from-file .stage/qr/out/rag_reader_h200_qwen.json
set -uo pipefail
: "${QWEN_DIR:?set QWEN_DIR to the converted Qwen2.5-Coder-1.5B-Instruct folder}"
: "${OUT:?set OUT to the folder whose files come back}"
export PYTHONPATH=${PYTHONPATH:-/tmp/site_q} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SPARSA_HOME=/tmp/qr_run/home
REPO=$PWD
SET=${QR_SET:-$REPO/.stage/qr/routing_set.json}
LATENCY_SET=${QR_LATENCY_SET:-$REPO/.stage/qr/latency_set.json}
DEVICE=${QR_DEVICE:-cuda} DTYPE=${QR_DTYPE:-bfloat16}
GEN_FLAGS=(--from-file "$SET" --model "$QWEN_DIR" --model-key qwen2.5-coder-1.5b-instruct --device "$DEVICE"
           --dtype "$DTYPE" --max-new-tokens 16 --context-tokens 400 --passage-tokens 128
           --cache "$OUT/qwen_generations.jsonl" --work /tmp/rag/qwen)
mkdir -p /tmp/qr_run && cd /tmp/qr_run  # import sparsa from the wheel, not the checkout (nor a stray /tmp/sparsa folder)
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python -c "import sparsa, torch, transformers; from sparsa.rag.reader import Reader; assert hasattr(Reader, 'answer_batch'), 'old wheel: no Reader.answer_batch'; print(sparsa.__file__, torch.__version__, transformers.__version__)"
} 2>&1 | tee "$OUT/env.log" || exit 2
started=$SECONDS
timeout 130 python "$REPO/bench/bench_rag.py" routing --step generate "${GEN_FLAGS[@]}" --batch-size 64 \
    2>&1 | grep -v "Loading weights" | tee "$OUT/generate.log"
rc=${PIPESTATUS[0]}
if [[ $rc -ne 0 ]]; then  # batched generation failed or ran long: go on one prompt at a time (the cache resumes)
  echo "batched generation exited $rc after $((SECONDS - started)) s; continuing unbatched" | tee -a "$OUT/generate.log"
  timeout $((150 - (SECONDS - started))) python "$REPO/bench/bench_rag.py" routing --step generate "${GEN_FLAGS[@]}" \
      --batch-size 1 2>&1 | grep -v "Loading weights" | tee -a "$OUT/generate.log"
fi
echo "generation: $((SECONDS - started)) s, $(wc -l < "$OUT/qwen_generations.jsonl") cached answers (2 per question wanted)" | tee -a "$OUT/generate.log"
timeout 75 python "$REPO/bench/bench_rag.py" latency --from-file "$LATENCY_SET" --model "$QWEN_DIR" \
    --device "$DEVICE" --dtype "$DTYPE" --work /tmp/rag/qwen --out "$OUT/rag_reader_h200_qwen.json" \
    2>&1 | grep -v "Loading weights" | tee "$OUT/latency.log"
ls -la "$OUT"
