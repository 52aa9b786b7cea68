#!/usr/bin/env bash
# SPLADE indexing end to end on the GPU machine (issue 22): bench/bench_indexing.py over 100,000 RealTime QA
# news passages (100 words each) and SciFact, texts in -> index written, against sentence-transformers.
#
# Here (no network needed): bash bench/gpu_indexing.sh stage [BEFORE_COMMIT]
#   fills the ignored folder .stage/idx (~40 MiB): wheels of HEAD and of BEFORE_COMMIT (default HEAD~1;
#   the "before" rows), built from `git archive` (committed files only), splade-tiny, the passages
#   (bench_indexing.py prepare, xz) and SciFact's corpus.
# There: run(command="bash bench/gpu_indexing.sh", carry=[".stage/idx"], timeout_s=240)
#   writes $OUT/$NAME.json (NAME=indexing_gpu) and $OUT/$NAME.log; copy the JSON to bench/results/.
#   BENCH_ARGS adds options (e.g. "--st-dtypes bfloat16 float16 --st-batch-sizes 256").
set -euo pipefail
S=.stage/idx

if [[ "${1:-}" == stage ]]; then
    PY=${PY:-.venv/bin/python}
    HOME_DIR=${SPARSA_HOME:-$HOME/.cache/sparsa}
    BEFORE=${2:-HEAD~1}
    mkdir -p "$S"
    rm -rf "$S/whl" "$S/models" && mkdir -p "$S/whl/new" "$S/whl/old" "$S/models"
    for pair in "new HEAD" "old $BEFORE"; do
        set -- $pair
        tmp=$(mktemp -d) && git archive "$2" | tar -x -C "$tmp"
        "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$S/whl/$1" "$tmp" && rm -rf "$tmp"
        git rev-parse --short "$2" >"$S/whl/$1/COMMIT"
    done
    cp -r "$HOME_DIR/models/splade-tiny" "$S/models/"
    if [[ ! -f "$S/passages.jsonl.xz" ]]; then
        "$PY" bench/bench_indexing.py prepare --out "$S/passages.jsonl" --passages 100000
        xz -6 -T0 "$S/passages.jsonl"
    fi
    cp "${SPARSA_DATA_DIR:-../shared/data}/scifact/corpus.jsonl.gz" "$S/scifact.jsonl.gz"
    du -sh "$S"
    exit 0
fi

OUT=${OUT:?set OUT to the folder for results}
PY=${PY:-python3} WORK=${WORK:-/tmp} NAME=${NAME:-indexing_gpu}
"$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "$S"/whl/new/*.whl
"$PY" -m pip install -q --no-index --no-deps --target "$WORK/site_old" "$S"/whl/old/*.whl
export PYTHONPATH=$WORK/site PYTHONUNBUFFERED=1 SPARSA_HOME=$WORK/sparsa SPARSA_BENCH_COMMIT=$(cat $S/whl/new/COMMIT)
mkdir -p "$SPARSA_HOME/models" && cp -r "$S/models/splade-tiny" "$SPARSA_HOME/models/"
xz -dc "$S/passages.jsonl.xz" >"$WORK/passages.jsonl"
REPO=$PWD
nproc; nvidia-smi --query-gpu=name,memory.used --format=csv,noheader || true
cd "$WORK"  # import sparsa from the wheel, not the checkout
"$PY" "$REPO/bench/bench_indexing.py" --corpus "realtimeqa-passages=$WORK/passages.jsonl" \
    "scifact=$REPO/$S/scifact.jsonl.gz" --legacy-site "$WORK/site_old" \
    --legacy-note "sparsa at commit $(cat "$REPO/$S/whl/old/COMMIT") (before this change), same job" \
    ${BENCH_ARGS:-} --name "$OUT/$NAME" 2>&1 | tee "$OUT/$NAME.log"
