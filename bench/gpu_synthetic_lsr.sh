#!/usr/bin/env bash
# Decoder SPLADE on Qwen2.5-Coder-1.5B-Instruct trained on synthetic queries (issue 28), on one GPU:
# `sparsa train splade --decoder` (the published Mistral-SPLADE settings it defaults to: 600 steps x 32,
# lr 2e-4, warm-up 50, LoRA r=16, term bias centred to ~256 doc terms; 1 hard negative as that run used)
# on SciFact train (919 labelled pairs + 3000 title->body, BM25 negatives) + the kept synthetic pairs of
# SciFact, Cranfield and CISI (bench/gpu_synthetic_queries.sh; each pair from its own corpus, no test
# query used), then bench_lsr.py encode: SciFact/Cranfield/CISI and TREC DL 2019 (whole corpus and
# judged pools) test runs (k=100), index sizes and query latencies to fetch.
# The same examples file as the splade-tiny arm (b) of bench/results/lsr.json.
#
# Here:   bash bench/gpu_synthetic_lsr.sh stage   -> .stage/slsr (24 MB): pairs.jsonl.gz and, per dataset,
#           corpus + judged test queries only (no qrels travel; for TREC DL 2019 a grade-free pool.tsv, the
#           passages each query's judged pool holds, for the dl19-pool runs). Needs
#           .stage/syn/out/<corpus>.jsonl.gz and a SciFact BM25 index (INDEX, default scifact-bm25 under
#           SPARSA_HOME) to mine SciFact train's pairs.
#         (`stage-data` rewrites only data/, keeping an already staged pairs.jsonl.gz)
#         bash bench/gpu_qwen.sh stage (or `wheel` after edits)
# There:  the Qwen pieces and setup as bench/gpu_qwen.sh says, then, while the machine stays warm:
#           run(command="bash bench/gpu_qwen.sh lsr", carry=[".stage/qw", ".stage/slsr"], timeout_s=600)
#         Training stops itself after TRAIN_S seconds (default 450) and keeps its checkpoint (every
#         CKPT steps, default 50) under /root/stage/slsr: call again and it resumes; once trained, the same
#         call encodes. The checkpoint (~55 MB with Adam's state) lives only on the warm machine.
#         $OUT gets train.log, encode.log, the model's sparsa.json and term bias, runs.tar.gz.
#         Estimates, not measured (gpu_memory.log and train.log will say): a step is ~35k tokens (64 echoed
#         documents of <=513 + 32 queries); without --gradient-checkpointing the 28 layers' activations are
#         ~100 GB, with it ~6 GB of saved layer inputs + one layer's recompute (~4 GB) + 6 GB float32 weights;
#         pooling holds one 512 MiB vocabulary chunk (pool_with_grad). ~3e14 FLOP a step: ~1-2 s on an H100,
#         so the 600 steps take 2-3 calls (each reloads the model, ~30 s, and loses < CKPT steps), which with
#         the Qwen pieces' calls must fit one machine's 30-minute hold (else STEPS=300 and say so).
#         Overrides: STEPS, BATCH, LAMBDA_DOC, LAMBDA_QUERY, MODEL, NAME, DEVICE, DATASETS, TRAIN_S, CKPT, STAGE,
#         SLSR. The same recipe on SmolLM2 (issue 28: is the coder checkpoint the limit?): after
#         `bash bench/gpu_cli_reruns.sh setup` pulled it, MODEL=smollm2-135m-instruct NAME=smollm2-splade-syn.
#         Tried here on CPU with
#         SmolLM2 on a 40-pair, 60-document stand-in (MODEL=smollm2-135m-instruct DEVICE=cpu STEPS=30 BATCH=2
#         CKPT=2 DATASETS=cisi SLSR=<stand-in> STAGE=/tmp/x): cut by TRAIN_S=75 at step 2, resumed, encoded.
# Then here: tar xzf runs.tar.gz; the qwen-splade-syn runs join lsr.json's other folders (its meta.command):
#              .venv/bin/python bench/bench_lsr.py evaluate --runs <bm25> <cpu runs> runs:qwen-splade-syn \
#              --gpu "<card>" --compare ... --note "<recipe, steps, train seconds>"
set -euo pipefail
step=${1:?usage: gpu_synthetic_lsr.sh stage|stage-data|run}
DATASETS=${DATASETS:-scifact cranfield cisi trec-dl-2019-passage}

if [[ $step == stage || $step == stage-data ]]; then  # stage-data: only (re)write data/, keep pairs.jsonl.gz
    PY=${PY:-.venv/bin/python}
    DATA=${SPARSA_DATA_DIR:-../shared/data}
    S=${SLSR:-.stage/slsr}
    if [[ $step == stage ]]; then
        rm -rf $S && mkdir -p $S
        .venv/bin/sparsa train splade --dataset scifact --first-stage "${INDEX:-scifact-bm25}" \
            --self-supervised 3000 --save-examples $S/scifact-train.jsonl.gz --out $S/unused
        (zcat $S/scifact-train.jsonl.gz; for c in scifact cranfield cisi; do zcat .stage/syn/out/$c.jsonl.gz
         done) | gzip > $S/pairs.jsonl.gz
        rm -f $S/scifact-train.jsonl.gz
    fi
    rm -rf $S/data
    for d in $DATASETS; do  # corpus + judged test queries; no qrels travel (DL 2019: its grade-free pool)
        "$PY" - "$DATA/$d" "$S/data/$d" <<'PY'
import gzip, json, shutil, sys
from pathlib import Path
sys.path.insert(0, "bench")
from common.lsr import POOL_FILE, POOLED, dataset_key
from sparsa.data import load_dataset
from sparsa.data.beir import corpus_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
data = load_dataset(src)  # the test split's judged queries, as bench_lsr.py evaluate scores them
corpus = corpus_file(src)
if corpus.suffix == ".gz":
    shutil.copyfile(corpus, dst / "corpus.jsonl.gz")
else:
    with open(corpus, "rb") as f, gzip.open(dst / "corpus.jsonl.gz", "wb") as out:
        shutil.copyfileobj(f, out)
with open(dst / "queries.jsonl", "w") as f:
    f.writelines(json.dumps({"_id": q.id, "text": q.text}) + "\n" for q in data.queries)
if dataset_key(src.name) in POOLED:  # which passages each query's pool holds, without their grades
    (dst / POOL_FILE).write_text("".join(f"{q}\t{d}\n" for q, docs in data.qrels.items() for d in docs))
PY
    done
    if [[ -f $S/pairs.jsonl.gz ]]; then echo "$(zcat $S/pairs.jsonl.gz | wc -l) training pairs"; fi
    wc -l $S/data/*/queries.jsonl && du -sh $S
    exit 0
fi

: "${OUT:?set OUT to the folder whose files come back}"
REPO=$PWD
STAGE=${STAGE:-/root/stage}
SLSR=${SLSR:-$REPO/.stage/slsr}  # the staged pairs and data (another folder: a small stand-in, for trying it)
NAME=${NAME:-qwen-splade-syn}  # the runs' system name; the model lives in $STAGE/slsr/$NAME on the warm machine
MODEL_OUT=$STAGE/slsr/$NAME
mkdir -p "$STAGE/slsr"
[[ ${DEVICE:-cuda} == cuda ]] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/env.log"
cd "$STAGE/slsr"  # import sparsa from the installed wheel, not the checkout
if [[ ! -f $MODEL_OUT/sparsa.json ]]; then
    [[ -f $MODEL_OUT/checkpoint.pt ]] && echo "resuming from $MODEL_OUT/checkpoint.pt" | tee -a "$OUT/train.log"
    if [[ ${DEVICE:-cuda} == cuda ]]; then  # the card's memory in use every 5 s: the peak goes in the record
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 5000 > "$OUT/gpu_memory.log" &
        monitor=$!
    fi
    set +e
    timeout "${TRAIN_S:-450}" python -m sparsa train splade --decoder --model "${MODEL:-qwen2.5-coder-1.5b-instruct}" \
        --examples "$SLSR/pairs.jsonl.gz" --negatives 1 --gradient-checkpointing \
        --checkpoint-every "${CKPT:-50}" --device "${DEVICE:-cuda}" --out "$MODEL_OUT" \
        ${STEPS:+--steps $STEPS} ${BATCH:+--batch-size $BATCH} ${LAMBDA_DOC:+--lambda-doc $LAMBDA_DOC} \
        ${LAMBDA_QUERY:+--lambda-query $LAMBDA_QUERY} 2>&1 | tr '\r' '\n' | grep -v "Loading weights" \
        | awk 'NR % 20 == 1 || !/training SPLADE/' | tee -a "$OUT/train.log"
    rc=${PIPESTATUS[0]}
    set -e
    [[ -n ${monitor:-} ]] && kill "$monitor" && echo "peak MiB in use: $(sort -n "$OUT/gpu_memory.log" | tail -1)"
    [[ $rc == 0 ]] || { echo "training stopped (rc $rc): call again to resume from its last checkpoint"; exit 0; }
fi
cp "$MODEL_OUT/sparsa.json" "$OUT/model.sparsa.json"
cp "$MODEL_OUT/splade_term_bias.safetensors" "$OUT/"
rm -rf runs && mkdir runs
# shellcheck disable=SC2086  # DATASETS is a word list
python "$REPO/bench/bench_lsr.py" encode --out runs \
    --data-dir "$SLSR/data" --datasets $DATASETS \
    --model "$NAME=$MODEL_OUT" --decoder "$NAME" 2>&1 | grep -v "Loading weights" \
    | tee "$OUT/encode.log"
tar czf "$OUT/runs.tar.gz" runs
