#!/usr/bin/env bash
# Synthetic training queries with Qwen2.5-Coder-1.5B-Instruct on a GPU (issue 28): `sparsa generate-queries`
# over SciFact, Cranfield, CISI, RealTime QA, TimeQA and TREC DL 2019's judged passages
# (bench/bench_synthetic_queries.py generate there, filter here) -> pairs per corpus and
# bench/results/synthetic_queries.json.
# Not run yet: written for the next GPU session.
#
# Here:   bash bench/gpu_synthetic_queries.sh stage
#           copies each corpus file (corpus files only: no queries, no qrels travel) into .stage/syn/data,
#           prepares RealTime QA and TimeQA passages (bench_rag_longcontext.py --stages prepare, if
#           runs/longcontext lacks them), writes the TimeQA train few-shot file; ~50 MB in all
#         bash bench/gpu_qwen.sh stage   (the model's 22 wheels in pieces, and this checkout as .stage/qw)
# There:  the Qwen pieces and setup calls as bench/gpu_qwen.sh says, then one call:
#           run(command="bash bench/gpu_qwen.sh synthetic", carry=[".stage/qw", ".stage/syn"], timeout_s=600)
#         it runs this script's `run` step (bench_synthetic_queries.py generate) with the wheel installed and
#         the model pulled under SPARSA_HOME; $OUT/syn gets each corpus's generation log and timing.
#         MAX_DOCS (default 2000 a corpus, a seeded sample; 0: all) and BATCH (default 128) override.
#         A call cut by its time limit resumes: copy the fetched syn/ folder to .stage/syn/resume/ and call again.
# Then here (the filter is BM25, and the GPU machine has no Java): copy the fetched syn/ to .stage/syn/out and
#   .venv/bin/python bench/bench_synthetic_queries.py filter --data .stage/syn/data --work .stage/syn/out \
#       --examples timeqa=.stage/syn/fewshot_timeqa_train.jsonl --max-docs 2000 --batch-size 128 --device cpu
#   (the same MAX_DOCS and BATCH): no LM loads, every document is in its log; the pairs land in
#   .stage/syn/out/<corpus>.jsonl.gz and the record in bench/results/synthetic_queries.json; then
#   python bench/results_doc.py --check
set -euo pipefail
step=${1:?usage: gpu_synthetic_queries.sh stage|run}

if [[ $step == stage ]]; then
    PY=${PY:-.venv/bin/python}
    DATA=${SPARSA_DATA_DIR:-../shared/data}
    S=.stage/syn/data
    mkdir -p $S/scifact $S/cranfield $S/cisi $S/realtimeqa $S/timeqa $S/trec-dl-2019-passage
    cp --no-preserve=mode "$DATA/scifact/corpus.jsonl.gz" $S/scifact/corpus.jsonl.gz
    gzip -c "$DATA/cranfield/corpus.jsonl" > $S/cranfield/corpus.jsonl.gz
    gzip -c "$DATA/cisi/corpus.jsonl" > $S/cisi/corpus.jsonl.gz
    cp --no-preserve=mode "$DATA/trec-dl-2019-passage/dl2019_document.jsonl.gz" $S/trec-dl-2019-passage/corpus.jsonl.gz
    for pair in realtimeqa:rtqa timeqa:tqa; do
        name=${pair%%:*} short=${pair##*:}
        [[ -f runs/longcontext/${short}_corpus.jsonl.gz ]] || \
            "$PY" bench/bench_rag_longcontext.py --stages prepare --dataset "$name" --device cpu
        cp "runs/longcontext/${short}_corpus.jsonl.gz" "$S/$name/corpus.jsonl.gz"
    done
    "$PY" bench/bench_synthetic_queries.py fewshot-timeqa --data "$DATA" --out .stage/syn/fewshot_timeqa_train.jsonl
    du -sh .stage/syn
    exit 0
fi

: "${QWEN_DIR:?set QWEN_DIR to the pulled Qwen2.5-Coder-1.5B-Instruct folder (bench/gpu_qwen.sh does)}"
: "${OUT:?set OUT to the folder whose files come back}"
REPO=$PWD
mkdir -p "$OUT/syn"
[[ -d .stage/syn/resume ]] && cp -r .stage/syn/resume/. "$OUT/syn/"  # logs of a cut call: resume them
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/env.log"
mkdir -p /tmp/syn_run && cd /tmp/syn_run  # import sparsa from the installed wheel, not the checkout
# The registry name, not QWEN_DIR: the logs record the model, and the filter step here names it the same way.
python "$REPO/bench/bench_synthetic_queries.py" generate --data "$REPO/.stage/syn/data" \
    --model qwen2.5-coder-1.5b-instruct --examples "timeqa=$REPO/.stage/syn/fewshot_timeqa_train.jsonl" \
    --max-docs "${MAX_DOCS:-2000}" --batch-size "${BATCH:-128}" --device cuda --work "$OUT/syn" \
    2>&1 | grep -v "Loading weights" | tee "$OUT/run.log"
