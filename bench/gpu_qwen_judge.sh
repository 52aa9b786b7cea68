#!/usr/bin/env bash
# Relevance judgements of all 9,260 NIST-judged TREC DL 2019 pairs by Qwen2.5-Coder-1.5B-Instruct on the H200
# (issue 8, "also try the larger optional model"): the SmolLM2 recipe of bench/gpu_judge.sh (same prompts,
# passages cut to 192 tokens, bfloat16), the model loaded once, three scorers one after the other, each into
# its own resumable checkpoint (bench/bench_judge.py --stages score --all-pairs --model ... --tag ...).
#
# Needs, on the GPU machine, run from the repo root:
#   - sparsa installed as a wheel built from this checkout (with RelevanceJudge.for_scorers and the chunked
#     query-likelihood log-softmax; checked first), on $PYTHONPATH (default /tmp/site_q);
#   - QWEN_DIR: the converted model folder (float32 safetensors; e.g. the registry pull of
#     qwen2.5-coder-1.5b-instruct); it is linked as /tmp/qwen2.5-coder-1.5b-instruct, the model path that the
#     checkpoints record, so a later call resumes them wherever QWEN_DIR is;
#   - carry .stage/qj: the DL19 files (made here by `bash bench/gpu_qwen_judge.sh stage`, 1.3 MB), optionally
#     .stage/qj/judge_qwen.tar.gz: an earlier call's output, to resume from.
# Use:  QWEN_DIR=/path/to/model bash bench/gpu_qwen_judge.sh      (or: bash bench/gpu_qwen.sh judge)
#       run(..., carry=[".stage/qj", <the wheel's folder>], timeout_s=600)
# Writes $OUT/judge_qwen.tar.gz: qwen2.5-coder-1.5b-instruct/{checkpoint-*.jsonl, timings-*.json, score.log,
# gpu.txt}. Here: tar xzf <files_at>/judge_qwen.tar.gz -C .stage/judge
#       .venv/bin/python bench/bench_judge.py --stages report --all-pairs     (-> bench/results/judge.json)
#
# Order and time: umbrela (~1.8M tokens: the issue's prompt judge, the cheapest, and the one SmolLM2 could not
# do), then ql under four prompts (~4.0M tokens), then pl (~1.6M tokens, LM head on every passage token).
# Measured on the H200: 117 s wall for the call (umbrela 28 s, ql 48 s, pl 25 s, load 9 s). Estimated beforehand: ~3 min in all: ~4.6 + 10.7 + 4.9 PFLOP at 250-450 TFLOP/s is 45-80 s of GPU work, plus at most
# SmolLM2's 75 s of per-pair CPU work and a 15-40 s model load. Scaling SmolLM2's wall times by the 13x FLOPs
# instead would give ~16 min: so python stops at JUDGE_BUDGET_S (default 530 s; Ctrl-C, the checkpoints keep
# every finished batch of 2,048 pairs) and the tarball still comes back inside timeout_s=600. After a stop:
# cp <files_at>/judge_qwen.tar.gz .stage/qj/ and run the same command again; it resumes.
# Env: JUDGE_SCORERS (default "umbrela ql pl"), JUDGE_TOKENS (tokens per batch, default 65536: the GEMMs are
# already 65k x 1536 x 8960, and peak memory stays ~25 GB, pl's bf16 logits over the 152k vocabulary).
set -euo pipefail

if [[ "${1:-}" == stage ]]; then  # here: the DL19 files the score stage reads
    DATA=${SPARSA_DATA_DIR:-../shared/data}/trec-dl-2019-passage
    rm -rf .stage/qj/data && mkdir -p .stage/qj/data/trec-dl-2019-passage
    cp "$DATA"/{2019qrels-pass.txt,dl2019_document.jsonl.gz,msmarco-test2019-queries.tsv} \
        .stage/qj/data/trec-dl-2019-passage/
    chmod -R u+w .stage/qj && du -sh .stage/qj
    exit 0
fi

: "${QWEN_DIR:?set QWEN_DIR to the converted Qwen2.5-Coder-1.5B-Instruct folder}"
: "${OUT:?OUT must name the folder whose files come back}"
[[ -f "$QWEN_DIR/config.json" ]] || { echo "no $QWEN_DIR/config.json"; exit 2; }
[[ -f .stage/qj/data/trec-dl-2019-passage/2019qrels-pass.txt ]] || { echo "carry .stage/qj (DL19 files)"; exit 2; }
TAG=qwen2.5-coder-1.5b-instruct
WORK=/tmp/judge_qwen
MODEL=/tmp/$TAG
REPO=$PWD
export PYTHONPATH=${PYTHONPATH:-/tmp/site_q} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    SPARSA_DATA_DIR=$REPO/.stage/qj/data
ln -sfn "$QWEN_DIR" "$MODEL"
mkdir -p "$WORK"
if [[ -f .stage/qj/judge_qwen.tar.gz && ! -d "$WORK/$TAG" ]]; then
    tar xzf .stage/qj/judge_qwen.tar.gz -C "$WORK" && echo "resuming from .stage/qj/judge_qwen.tar.gz"
fi
mkdir -p "$WORK/$TAG"
cd /tmp  # import sparsa from the wheel, not the checkout
REPO=$REPO python - <<'EOF'
import os, sparsa, sparsa.rerank.query_likelihood as ql
from sparsa.judge.judge import RelevanceJudge
assert not sparsa.__file__.startswith(os.environ["REPO"]), f"sparsa from {sparsa.__file__}, not the wheel"
assert hasattr(RelevanceJudge, "for_scorers") and hasattr(ql, "LOGPROB_CHUNK_ELEMENTS"), \
    "the installed sparsa wheel predates the Qwen judging changes: rebuild it from this checkout"
print("sparsa from", sparsa.__file__)
EOF
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$WORK/$TAG/gpu.txt"
rc=0
timeout -s INT -k 30 "${JUDGE_BUDGET_S:-530}" python "$REPO/bench/bench_judge.py" --stages score --all-pairs \
    --model "$MODEL" --tag "$TAG" --scorers ${JUDGE_SCORERS:-umbrela ql pl} --ql-prompts question query plain chat \
    --device cuda --dtype bfloat16 --max-tokens-per-batch "${JUDGE_TOKENS:-65536}" --batch-pairs 2048 \
    --max-passage-tokens 192 --stage-dir "$WORK" >> "$WORK/$TAG/score.log" 2>&1 || rc=$?
grep -v "Loading weights\|judging:\|FutureWarning\|outputs = func" "$WORK/$TAG/score.log" | tail -40 || true
[[ $rc == 124 || $rc == 130 ]] && echo "stopped at JUDGE_BUDGET_S=${JUDGE_BUDGET_S:-530} s: resumable (see the header)"
tar czf "$OUT/judge_qwen.tar.gz" -C "$WORK" "$TAG"
ls -la "$OUT" "$WORK/$TAG"
exit $rc
