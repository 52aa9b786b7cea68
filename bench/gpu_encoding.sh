#!/usr/bin/env bash
# Encoding throughput on an H100/H200 (issue 22: unseen texts, best baseline): splade-tiny and minilm-l6
# against sentence-transformers on SciFact, timed as an indexing job runs (bench/bench_encoding.py says
# exactly what): every timed pass is a fresh process's first pass over the corpus texts (no warm word or
# tokenizer cache), after a warm-up on marked copies; ours in 3 processes (median), sentence-transformers
# in every dtype (float32, bfloat16, float16) x batch size (32, 64, 128, 256), each in its own process,
# the fastest one the baseline; tokenisation timed alone. ~32 processes, about 6-8 minutes.
#
# Here (needs network once, for two wheels): bash bench/gpu_encoding.sh stage
#   fills the ignored folder .stage/enc (~60 MiB): this checkout as a wheel, ir_measures +
#   pytrec-eval-terrier wheels (absent there), splade-tiny as is, minilm-l6 with its weights packed as
#   float16 (bench/weights_fp16.py: 91 MB of float32 do not fit in one call's 64 MiB), and the SciFact
#   files the bench reads.
# There: run(command="bash bench/gpu_encoding.sh", carry=[".stage/enc"], timeout_s=600)
#   writes $OUT/$NAME.json and $OUT/$NAME.log (NAME=encoding_gpu); locally, copy the JSON to
#   bench/results/ (its meta names the commit of the wheel). Rows are written as each model finishes.
#   Short of time: one model a call, e.g.
#   MODELS=splade-tiny NAME=encoding_gpu_splade bash bench/gpu_encoding.sh
set -euo pipefail
S=.stage/enc

if [[ "${1:-}" == stage ]]; then
    PY=${PY:-.venv/bin/python}
    HOME_DIR=${SPARSA_HOME:-$HOME/.cache/sparsa}
    DATA=${SPARSA_DATA_DIR:-../shared/data}/scifact
    rm -rf "$S" && mkdir -p "$S/whl" "$S/models" "$S/data/scifact/qrels"
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$S/whl" .
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$S/whl" \
        ir_measures==0.4.3 pytrec-eval-terrier==0.5.11
    cp -r "$HOME_DIR/models/splade-tiny" "$S/models/"
    mkdir -p "$S/models/minilm-l6"
    (cd "$HOME_DIR/models/minilm-l6" && find . -type f ! -name model.safetensors ! -name vocab.txt \
        -exec cp --parents {} "$OLDPWD/$S/models/minilm-l6/" \;)
    "$PY" bench/weights_fp16.py pack "$HOME_DIR/models/minilm-l6/model.safetensors" "$S/minilm-l6.fp16.xz"
    cp "$DATA/corpus.jsonl.gz" "$DATA/queries.jsonl" "$S/data/scifact/"
    cp "$DATA/qrels/test.tsv" "$S/data/scifact/qrels/"
    git rev-parse --short HEAD >"$S/COMMIT"  # no git there: the JSON's note names the commit
    git status --short >"$S/STATUS"
    du -sh "$S"; git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1
    exit 0
fi

# A dry run on CPU here (Python 3.11: the cp312 wheel does not install; the venv has ir_measures):
#   OUT=/tmp/encout WORK=/tmp/encdry PY=.venv/bin/python DEVICE=cpu DRY_RUN=1 \
#   BENCH_ARGS="--our-docs 64 --repeats 1 --baseline-batch-sizes 16 32" bash bench/gpu_encoding.sh
OUT=${OUT:?set OUT to the folder for results}
PY=${PY:-python3} WORK=${WORK:-/tmp} DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-splade-tiny minilm-l6} NAME=${NAME:-encoding_gpu}
wheels=("$S"/whl/*.whl)
[[ -n "${DRY_RUN:-}" ]] && wheels=("$S"/whl/sparsa-*.whl)
"$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "${wheels[@]}"
export PYTHONPATH=$WORK/site PYTHONUNBUFFERED=1 SPARSA_HOME=$WORK/sparsa SPARSA_DATA_DIR=$PWD/$S/data
export SPARSA_BENCH_WEIGHTS_NOTE="wheel built from commit $(cat $S/COMMIT) (no git on the GPU machine). \
splade-tiny: registry weights as pulled. minilm-l6: registry weights rounded to float16 for the transfer and \
upcast to float32 before loading (both implementations load the same weights)."
mkdir -p "$SPARSA_HOME/models" && cp -r "$S/models/splade-tiny" "$S/models/minilm-l6" "$SPARSA_HOME/models/"
"$PY" bench/weights_fp16.py unpack "$S/minilm-l6.fp16.xz" "$SPARSA_HOME/models/minilm-l6/model.safetensors"
REPO=$PWD
nproc; nvidia-smi --query-gpu=name,memory.used --format=csv,noheader || true
cd "$WORK"  # import sparsa from the wheel, not the checkout
"$PY" -c "import sparsa, tokenizers, transformers
print(sparsa.__file__, tokenizers.__version__, transformers.__version__)"
"$PY" "$REPO/bench/bench_encoding.py" --device "$DEVICE" --models $MODELS --repeats 3 \
    ${BENCH_ARGS:-} --name "$OUT/$NAME" 2>&1 | tee "$OUT/$NAME.log"
"$PY" - "$OUT/$NAME.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    tokens = r["mean_tokens_per_doc"]
    print(f"{r['model']}:{r['variant']}: tokenise {r['tokenize_only_docs_per_s']:.0f} docs/s "
          f"(plain HF call {r['tokenize_plain_hf_call_docs_per_s']:.0f}), "
          f"{tokens['timed']} tokens/doc (warm-up {tokens['warmup']})")
    if "ours" not in r:
        continue
    o = r["ours"]
    print(f"  ours     {o['config']}: {o['docs_per_s']:8.0f} docs/s (runs {o['runs_docs_per_s']}), "
          f"nDCG@10 {o.get('nDCG@10', '-')}, load {o['load_seconds']} s")
    for b in r["baseline_sweep"]:
        figures = b.get("error") or (f"{b['docs_per_s']:8.0f} docs/s, nDCG@10 {b.get('nDCG@10', '-')}, "
                                     f"{b['peak_memory_mib']:.0f} MiB")
        print(f"  baseline {b['config']}: {figures}")
    print(f"  best baseline {r['baseline_config']}: "
          f"speedup_vs_best_baseline {r['speedup_vs_best_baseline']}x")
PY
