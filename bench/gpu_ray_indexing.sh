#!/usr/bin/env bash
# bench/results/ray_indexing.json on a 2-GPU machine (run's kind nvidia-h100-x2; issue 27): the SPLADE
# (splade-tiny) and dense (minilm-l6) index jobs through Ray (build_index_job(ray=RayOptions(actors=N)))
# on 1 and 2 GPUs over 500,000 SciFact documents repeated with unique ids: docs/s, scaling efficiency,
# where the time goes (bench/bench_ray_indexing.py says what each column is). No NCCL: one process per GPU.
#
# Ray is not on the GPU machine's image and its wheel (79 MB) is over one call's 64 MiB, so everything
# travels as one tar stream cut into 56 MiB pieces, one piece per call, into /root/stage (kept while the
# machine stays warm between calls).
# Here (network once, for the wheels): bash bench/gpu_ray_indexing.sh stage
#   fills the ignored folder .stage/rayidx: ray 2.60.0 (cp312) and its four wheels absent there
#   (jsonschema, jsonschema-specifications, referencing, rpds-py), this repo's HEAD as a wheel (from
#   `git archive`: committed files only; commit first), splade-tiny as is, minilm-l6 with its weights
#   packed as float16 (bench/weights_fp16.py; unpacked to float32 there: throughput unchanged), SciFact's
#   corpus; then cuts them into .stage/rayidx/parts/p00, p01, p02.
# There, back to back on one warm machine:
#   run(command="bash bench/gpu_ray_indexing.sh part", carry=[".stage/rayidx/parts/p00"], kind="nvidia-h100-x2")
#   run(command="bash bench/gpu_ray_indexing.sh part", carry=[".stage/rayidx/parts/p01"], kind="nvidia-h100-x2")
#   run(command="bash bench/gpu_ray_indexing.sh", carry=[".stage/rayidx/parts/p02"], kind="nvidia-h100-x2",
#       timeout_s=600)
#   (with more pieces: `part` for each but the last.) The last call joins the pieces, installs, checks
#   Ray, runs the bench and writes $OUT/$NAME.json and $OUT/$NAME.log (NAME=ray_indexing); copy the JSON
#   to bench/results/ here (its meta names the wheel's commit). Time: 4 jobs of 500,000 documents at the
#   1-GPU rate seen for SciFact (3.7-4.2k docs/s) and half that, plus Ray and model start-up per job:
#   about 8 minutes, close to the 600 s limit; the JSON is rewritten after every job, so a run cut short
#   keeps its rows; then run the missing kind on the warm machine, e.g. RAY_KINDS=dense
#   NAME=ray_indexing_dense bash bench/gpu_ray_indexing.sh (pieces stay in /root/stage).
#   RAY_DOCS (default 500000), RAY_GPUS (default 1,2; 1,2,4 on an x4 kind), RAY_KINDS (default "splade
#   dense") and RAY_ARGS (more flags) change the run.
# Check here (CPU actors, not a figure; this Python's own ray, the staged sparsa wheel): LOCAL_CHECK=1 \
#   OUT=/tmp/rayo STAGE=/tmp/raystage PY=$PWD/.venv/bin/python RAY_DOCS=2000 RAY_GPUS=1 \
#   RAY_ARGS="--device cpu --batch-size 256" bash bench/gpu_ray_indexing.sh
set -euo pipefail
source "${BASH_SOURCE%/*}/pieces.sh"
S=.stage/rayidx
STAGE=${STAGE:-/root/stage/rayidx}
step=${1:-run}

if [[ $step == stage ]]; then
    PY=${PY:-.venv/bin/python}
    HOME_DIR=${SPARSA_HOME:-$HOME/.cache/sparsa}
    DATA=${SPARSA_DATA_DIR:-../shared/data}/scifact
    P=$S/payload
    rm -rf "$P" "$S/parts" && mkdir -p "$P/whl" "$P/models" "$P/data" "$S/parts" "$S/dl"
    [[ -f $S/dl/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl ]] || \
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$S/dl" ray==2.60.0 jsonschema jsonschema-specifications referencing rpds-py
    cp "$S"/dl/*.whl "$P/whl/"
    tmp=$(mktemp -d) && git archive HEAD | tar -x -C "$tmp"
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$P/whl" "$tmp" && rm -rf "$tmp"
    git rev-parse --short HEAD >"$P/COMMIT"
    cp -r "$HOME_DIR/models/splade-tiny" "$P/models/"
    mkdir -p "$P/models/minilm-l6"
    (cd "$HOME_DIR/models/minilm-l6" && find . -type f ! -name model.safetensors ! -name vocab.txt \
        -exec cp --parents {} "$OLDPWD/$P/models/minilm-l6/" \;)
    "$PY" bench/weights_fp16.py pack "$HOME_DIR/models/minilm-l6/model.safetensors" "$P/minilm-l6.fp16.xz"
    cp "$DATA/corpus.jsonl.gz" "$P/data/scifact.jsonl.gz"
    pieces_cut 56M "$S/parts/p" -C "$P" .
    rm -rf "$P"
    ls -la "$S/parts"
    exit 0
fi

# There: keep the carried piece(s), then (run) join, install and bench.
pieces_keep "$S/parts" "$STAGE/parts"
[[ $step == part ]] && exit 0

OUT=${OUT:?set OUT to the folder for results}
PY=${PY:-python3} NAME=${NAME:-ray_indexing}
REPO=$PWD
rm -rf "$STAGE/payload" "$STAGE/site"
pieces_join "$STAGE/parts" "$STAGE/payload"
P=$STAGE/payload
wheels=("$P"/whl/*.whl)
[[ -n ${LOCAL_CHECK:-} ]] && wheels=("$P"/whl/sparsa-*.whl)  # a check here: this Python's own ray
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$STAGE/site" "${wheels[@]}"
export PYTHONPATH=$STAGE/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SPARSA_HOME=$STAGE/home \
    SPARSA_BENCH_COMMIT=$(cat "$P/COMMIT") RAY_USAGE_STATS_ENABLED=0
mkdir -p "$SPARSA_HOME/models" && rm -rf "$SPARSA_HOME/models"/* && cp -r "$P/models"/* "$SPARSA_HOME/models/"
"$PY" "$REPO/bench/weights_fp16.py" unpack "$P/minilm-l6.fp16.xz" "$SPARSA_HOME/models/minilm-l6/model.safetensors"
mkdir -p "$OUT"
cd /tmp  # import sparsa from the wheel, not the checkout
"$PY" -c 'import sys, ray, torch, sparsa; print(sys.version.split()[0], "ray", ray.__version__, "torch",
torch.__version__, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], sparsa.__file__)'
nproc; nvidia-smi --query-gpu=name,memory.used --format=csv,noheader || true
# shellcheck disable=SC2086  # RAY_KINDS and RAY_ARGS are lists
"$PY" "$REPO/bench/bench_ray_indexing.py" --docs "${RAY_DOCS:-500000}" --gpus "${RAY_GPUS:-1,2}" \
    --kinds ${RAY_KINDS:-splade dense} --corpus "$P/data/scifact.jsonl.gz" ${RAY_ARGS:-} \
    --results "$OUT/$NAME.json" 2>&1 | tee "$OUT/$NAME.log"
