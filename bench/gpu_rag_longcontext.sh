#!/usr/bin/env bash
# Long-context RAG on the GPU machine (issue 24): bench/bench_rag_longcontext.py with Qwen2.5-1.5B.
#
# Here:   python bench/bench_rag_longcontext.py --stages prepare --dataset realtimeqa   (and --dataset timeqa)
#         bash bench/gpu_rag_longcontext.sh stage    this checkout's HEAD as a wheel + splade-tiny -> .stage/lc
# There:  Qwen first (bench/gpu_qwen.sh part ... setup: pulled into /root/stage/home), then, back to back:
#         run(command="bash bench/gpu_rag_longcontext.sh index", carry=[".stage/lc", "runs/longcontext"])
#         run(command="bash bench/gpu_rag_longcontext.sh run realtimeqa", carry=[".stage/lc"])
#         run(command="bash bench/gpu_rag_longcontext.sh run timeqa", carry=[".stage/lc"])
#         run(command="bash bench/gpu_rag_longcontext.sh serve [sparse [ROUTER_FILE]]", carry=[".stage/lc"])
set -euo pipefail
STAGE=/root/stage
step=${1:?usage: gpu_rag_longcontext.sh stage|index|run DATASET|serve}
if [[ $step == stage ]]; then
    rm -rf .stage/lc /tmp/lc-head && mkdir -p .stage/lc/models
    cp -r "${SPARSA_HOME:-$HOME/.cache/sparsa}/models/splade-tiny" .stage/lc/models/
    # the service's packages, which the GPU image lacks, at the locked versions (fastapi 0.165 imports
    # opentelemetry-api: without it `sparsa serve` stopped there on 2026-12-06)
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .stage/lc/serve $(grep -i -E \
        "^(fastapi|starlette|pydantic|pydantic_core|uvicorn|annotated-types|typing-inspection|python-multipart|opentelemetry-api)==" \
        constraints.txt)
    git worktree add -f --detach /tmp/lc-head HEAD >/dev/null
    (cd /tmp/lc-head && "$OLDPWD/.venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$OLDPWD/.stage/lc/whl" .)
    git worktree remove --force /tmp/lc-head
    ls -la .stage/lc/whl; exit 0
fi
REPO=$PWD
export PYTHONPATH=$STAGE/lcsite SPARSA_HOME=$STAGE/home PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf "$STAGE/lcsite" && pip install -q --no-index --no-deps --target "$STAGE/lcsite" .stage/lc/whl/*.whl .stage/lc/serve/*.whl
mkdir -p "$STAGE/lc" "$SPARSA_HOME/models" && cd /tmp  # sparsa from the wheel, not the checkout
case $step in
    index)
        cp -r "$REPO/.stage/lc/models/splade-tiny" "$SPARSA_HOME/models/" && cp "$REPO"/runs/longcontext/* "$STAGE/lc/"
        for dataset in realtimeqa timeqa; do
            python "$REPO/bench/bench_rag_longcontext.py" --stages index --dataset $dataset --stage-dir "$STAGE/lc" \
                --device cuda 2>&1 | grep -v "Loading weights"
        done
        # the run's document store (built once per corpus on first load), here rather than in the run's 10 min
        python -c "from sparsa.docstore import open_documents as o; print(o('$STAGE/lc/rtqa_corpus.jsonl.gz'))"
        ;;
    run)
        python "$REPO/bench/bench_rag_longcontext.py" --stages run --dataset "$2" --stage-dir "$STAGE/lc" \
            --device cuda --out "$OUT/rag_longcontext_$2.json" "${@:3}" 2>&1 | grep -v "Loading weights" \
            | tee "$OUT/$2.log" ;;
    serve)
        # serve [ATTENTION [ROUTER]]: the example chain with its reader's attention set (default: the example's
        # own) and, given a router file (relative to the checkout), that router deciding (mode auto)
        route=() qa_mode=retrieve
        [[ -n ${3:-} ]] && qa_mode=auto && route=(-e "s#^mode = \"retrieve\".*#mode = \"auto\"\npath = \"$REPO/$3\"#")
        sed -e "s#runs/longcontext#$STAGE/lc#" -e "s#^attention = \"auto\"#attention = \"${2:-auto}\"#" \
            "${route[@]}" "$REPO/examples/realtimeqa.toml" > "$STAGE/realtimeqa.toml"
        grep "^attention\|^mode\|^path" "$STAGE/realtimeqa.toml"
        python -m sparsa ask "Which country's prime minister resigned this week as violence and unrest persist?" \
            --config "$STAGE/realtimeqa.toml" --as-of 2022-01-07 --json | tee "$OUT/ask.json"
        (python -m sparsa serve --config "$STAGE/realtimeqa.toml" --bm25 none --splade none --port 8011 \
            > "$OUT/serve.log" 2>&1 &)
        for _ in $(seq 120); do curl -sf localhost:8011/health > /dev/null && break; sleep 2; done
        curl -s localhost:8011/health | tee "$OUT/health.json"; echo
        curl -s localhost:8011/qa -H 'Content-Type: application/json' \
            -d "{\"question\": \"Which country did Russia invade in February 2022?\", \"mode\": \"$qa_mode\"}" \
            | tee "$OUT/qa.json" ;;
esac
