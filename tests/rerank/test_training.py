"""TILDE and TILDEv2 training on a real model: a few steps, saved folders that reload and rerank."""

from __future__ import annotations

import json

import pytest

from sparsa.errors import ConfigError
from sparsa.rerank.tilde import TildeV2Reranker, build_tildev2_store, tildev2_score_ref
from sparsa.rerank.tilde_expansion import TildeConfig, TildeExpander, TildeTrainConfig, train_tilde
from sparsa.rerank.tilde_model import TildeV2Config, TildeV2Encoder, TildeV2TrainConfig, train_tildev2
from sparsa.rerank.training import OptimConfig
from sparsa.retrieval.splade_train import TrainingExample
from sparsa.types import Document, Query

pytestmark = pytest.mark.slow

EXAMPLES = [
    TrainingExample("vitamin d and bone density", "Vitamin D supplements increase bone mineral density.",
                    ("Insulin resistance in type 2 diabetes.", "Malaria transmission by mosquitoes.")),
    TrainingExample("statins lower cholesterol", "Statin therapy reduces LDL cholesterol levels.",
                    ("Malaria transmission by mosquitoes.", "Exercise improves cardiovascular fitness.")),
    TrainingExample("smoking causes lung cancer", "Tobacco smoking is the main cause of lung cancer.",
                    ("Exercise improves cardiovascular fitness.", "Gut microbiota composition in infants.")),
    TrainingExample("aspirin prevents stroke", "Low-dose aspirin lowers the risk of ischemic stroke.",
                    ("Gut microbiota composition in infants.", "Insulin resistance in type 2 diabetes.")),
]
TINY = OptimConfig(steps=3, batch_size=2, lr=1e-4, warmup_steps=1)


def test_train_both_models_save_reload_and_rerank(tmp_path):
    tilde = train_tilde(EXAMPLES, tmp_path / "tilde", TildeTrainConfig(TildeConfig(max_passage_tokens=32,
                                                                                   expansion_terms=4), TINY),
                        data_description={"what": "four hand-written pairs"}, show_progress=False)
    record = json.loads((tilde / "sparsa.json").read_text())
    assert (record["training"]["steps"] == 3
            and record["training"]["data"] == {"what": "four hand-written pairs"})
    expander = TildeExpander.load(tilde)
    assert expander.config.expansion_terms == 4 and expander.config.model == str(tilde.resolve())

    config = TildeV2TrainConfig(TildeV2Config(max_passage_tokens=32), TINY, group_size=3)
    v2 = train_tildev2(EXAMPLES, tmp_path / "v2", config, expander=expander, show_progress=False)
    record = json.loads((v2 / "sparsa.json").read_text())
    assert record["training"]["examples"] == 4 and record["training"]["wall_seconds"] > 0
    encoder = TildeV2Encoder.load(v2)
    docs = [Document(str(i), e.positive) for i, e in enumerate(EXAMPLES)]
    store = build_tildev2_store(docs, tmp_path / "store", encoder, expander, show_progress=False)
    reranker = TildeV2Reranker.open(store)
    assert reranker.store.manifest["nnz"] > 0
    query = Query("q", "statin therapy reduces cholesterol")
    ids = reranker.store.tokenizer.query_ids(query.text)
    for hit in reranker.rerank(query, docs):  # a few steps teach nothing; check the plumbing
        assert (hit.score
                == pytest.approx(tildev2_score_ref(ids, reranker.store.passage(hit.doc_id)), rel=1e-5))


def test_training_refuses_too_few_negatives(tmp_path):
    with pytest.raises(ConfigError, match="negatives"):
        train_tildev2(EXAMPLES, tmp_path / "v2", TildeV2TrainConfig(group_size=8), show_progress=False)
