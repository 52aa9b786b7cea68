#!/usr/bin/env bash
# The GPU run behind bench/results/lsr_scifact_finetunes.json (written as lsr.json; fine-tuned rows) and the H200 encoding timings.
# Run on the H200 machine from the repo root, with .stage/gpu carried (see docs/benchmarks.md):
#   .stage/gpu/whl/sparsa-*.whl        this checkout as a wheel (pip wheel --no-deps .)
#   .stage/gpu/models/splade-tiny      the registry's splade-tiny folder
#   .stage/gpu/data/{scifact,cranfield,cisi}
#   .stage/gpu/scifact-train.jsonl.gz  sparsa train splade --dataset scifact --first-stage <bm25 index>
#                                      --self-supervised 3000 --save-examples ...
# Results land in $OUT: runs.tar.gz (TREC runs, k=100, for bench_lsr.py evaluate), trained models
# as bf16 tarballs, and logs.
set -euo pipefail
pip install -q --no-index --no-deps --target /tmp/site .stage/gpu/whl/sparsa-*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 SPARSA_HOME=/tmp/sparsa SPARSA_DATA_DIR=$PWD/.stage/gpu/data
mkdir -p /tmp/sparsa/models /tmp/runs && cp -r .stage/gpu/models/splade-tiny /tmp/sparsa/models/
export REPO=$PWD
cd /tmp  # import sparsa from the wheel, not the checkout
python - <<'PY' 2>&1 | tee $OUT/train.log
import time
from sparsa.retrieval.splade import SpladeConfig
from sparsa.retrieval.splade_train import SpladeTrainConfig, train_splade
from sparsa.retrieval.training_data import read_examples
import os
examples = read_examples(os.environ["REPO"] + "/.stage/gpu/scifact-train.jsonl.gz")
labelled = examples[:919]  # the file lists its 919 labelled pairs first, then title->body pairs
variants = {
    "ft-mixed": (examples, SpladeTrainConfig(steps=1000, batch_size=32, lr=5e-5)),
    "ft-labelled": (labelled, SpladeTrainConfig(steps=300, batch_size=32, lr=5e-5)),
}
for name, (data, config) in variants.items():
    t = time.time()
    train_splade(data, f"/tmp/{name}", config, device="cuda", show_progress=False,
                 data_description={"examples": len(data), "source": "scifact-train.jsonl.gz"})
    print(name, "trained in", round(time.time() - t, 1), "s", flush=True)
PY
python $REPO/bench/bench_lsr.py encode --out /tmp/runs --model splade-tiny=splade-tiny \
    --model splade-tiny-ft-mixed=/tmp/ft-mixed --model splade-tiny-ft-labelled=/tmp/ft-labelled 2>&1 | tee $OUT/encode.log
tar czf $OUT/runs.tar.gz -C /tmp runs
for name in ft-mixed ft-labelled; do
  python -c "
import sys, torch
from transformers import AutoModelForMaskedLM, AutoTokenizer
m = AutoModelForMaskedLM.from_pretrained('/tmp/$name', dtype=torch.bfloat16); m.save_pretrained('/tmp/$name-bf16')
AutoTokenizer.from_pretrained('/tmp/$name').save_pretrained('/tmp/$name-bf16')"
  cp /tmp/$name/sparsa.json /tmp/$name-bf16/
  tar czf $OUT/$name.tar.gz -C /tmp $name-bf16
done
