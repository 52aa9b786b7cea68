"""SPLADE training on a real model: a few steps, checkpoints and resume, LoRA merge, examples I/O."""

from __future__ import annotations

import json

import pytest
import torch

from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder
from sparsa.retrieval.splade_train import SpladeTrainConfig, TrainingExample, flops, train_splade
from sparsa.retrieval.training_data import (
    labelled_examples,
    read_examples,
    title_body_examples,
    write_examples,
)
from sparsa.training import add_lora, merge_lora, save_checkpoint, trainable_state
from sparsa.types import Hit, Qrels, Run

pytestmark = pytest.mark.slow

EXAMPLES = [
    TrainingExample("vitamin d and bone density", "Vitamin D supplements increase bone mineral density.",
                    ("Insulin resistance in type 2 diabetes.",)),
    TrainingExample("statins lower cholesterol", "Statin therapy reduces LDL cholesterol levels.",
                    ("Malaria transmission by mosquitoes.",)),
    TrainingExample("smoking causes lung cancer", "Tobacco smoking is the main cause of lung cancer.",
                    ("Exercise improves cardiovascular fitness.",)),
    TrainingExample("aspirin prevents stroke", "Low-dose aspirin lowers the risk of ischemic stroke.",
                    ("Gut microbiota composition in infants.",)),
]
TINY = {"batch_size": 2, "max_query_length": 16, "max_doc_length": 32, "warmup_steps": 1,
        "checkpoint_every": 1}


def test_flops_is_the_sum_of_squared_mean_weights():
    weights = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    assert float(flops(weights)) == pytest.approx(2.0**2 + 0.0 + 1.0**2)


def test_pooling_with_grad_matches_the_reference_in_value_and_gradients(monkeypatch):
    """The best-position pooling equals autograd through the [B, L, V] reference, over several chunks."""
    from sparsa.kernels.splade_pool import splade_pool_ref
    from sparsa.retrieval import splade_train

    torch.manual_seed(0)
    hidden, weight, bias = (torch.randn(*shape, requires_grad=True) for shape in ((5, 9, 8), (50, 8), (50,)))
    start, end = torch.tensor([0, 2, 1, 3, 0]), torch.tensor([9, 6, 4, 8, 1])
    monkeypatch.setattr(splade_train, "POOL_CHUNK_ELEMENTS", 5 * 9 * 7)  # 8 vocabulary chunks
    coefficients = torch.randn(5, 50)
    results = []
    for pool in (splade_pool_ref, splade_train.pool_with_grad):
        hidden.grad = weight.grad = bias.grad = None
        pooled = pool(hidden, weight, bias, start, end)
        (pooled * coefficients).sum().backward()
        results.append([pooled.detach(), hidden.grad, weight.grad, bias.grad])
    for ours, reference in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, reference)
    assert (results[1][0] > 0).any() and (results[1][0] == 0).any()  # both sides of the relu are covered


def test_gradient_checkpointing_trains_the_same_model(tmp_path):
    plain, checkpointed = (
        train_splade(EXAMPLES, tmp_path / name, SpladeTrainConfig(steps=2, gradient_checkpointing=on, **TINY),
                     device="cpu", show_progress=False)
        for name, on in (("plain", False), ("checkpointed", True)))
    losses = [json.loads((out / "sparsa.json").read_text())["final"] for out in (plain, checkpointed)]
    assert losses[1]["contrastive"] == pytest.approx(losses[0]["contrastive"], rel=1e-4)
    vectors = [SpladeEncoder(SpladeConfig(model=str(out))).encode_queries(["vitamin d"])[0]
               for out in (plain, checkpointed)]
    assert vectors[0].indices.tolist() == vectors[1].indices.tolist()


def test_train_save_and_load(tmp_path):
    out = train_splade(EXAMPLES, tmp_path / "model", SpladeTrainConfig(steps=2, **TINY), device="cpu",
                       show_progress=False)
    record = json.loads((out / "sparsa.json").read_text())
    assert record["steps"] == 2 and record["examples"] == 4 and record["final"]["contrastive"] > 0
    assert not (out / "checkpoint.pt").exists()
    encoder = SpladeEncoder(SpladeConfig(model=str(out)))
    vector = encoder.encode_queries(["vitamin d"])[0]
    assert vector.nnz > 0 and "vitamin" in dict(encoder.decode(vector))


def test_training_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    config = SpladeTrainConfig(steps=3, **TINY)
    # A checkpoint at step 3 of 3: the run resumes there and only saves.
    from sparsa.retrieval import splade_train

    model = splade_train.TrainableSplade(config.encoder, torch.device("cpu"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    save_checkpoint(out / "checkpoint.pt", step=3, params=trainable_state(model),
                    optimizer=optimizer.state_dict())
    train_splade(EXAMPLES, out, config, device="cpu", show_progress=False)
    assert json.loads((out / "sparsa.json").read_text())["wall_seconds_this_run"] < 30


def test_lora_merge_keeps_the_function():
    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("q_proj", torch.nn.Linear(8, 8))
    x = torch.randn(3, 8)
    assert add_lora(model, rank=2) == 1
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["q_proj.lora_A.default.weight",
                                                                           "q_proj.lora_B.default.weight"]
    with torch.no_grad():
        model.q_proj.lora_B["default"].weight.normal_()
    adapted = model(x)
    merge_lora(model)
    assert isinstance(model.q_proj, torch.nn.Linear)
    torch.testing.assert_close(model(x), adapted)


def test_examples_from_qrels_and_titles(tmp_path, scifact):
    some = scifact.queries[:3]
    run = Run({q.id: [Hit(d, 1.0) for d in list(scifact.corpus)[:10]] for q in some})
    qrels = Qrels({q.id: scifact.qrels[q.id] for q in some})
    labelled = labelled_examples(some, qrels, scifact.corpus, run, negatives=2)
    assert len(labelled) == qrels.num_judgements and all(len(e.negatives) == 2 for e in labelled)
    relevant_texts = {scifact.corpus[d].full_text for q in some for d in qrels[q.id]}
    assert not relevant_texts & {n for e in labelled for n in e.negatives}
    pseudo = title_body_examples(scifact.corpus, negatives=1, limit=5)
    assert len(pseudo) == 5 and all(e.query and e.positive != e.query for e in pseudo)
    write_examples(labelled + pseudo, tmp_path / "ex.jsonl.gz")
    assert read_examples(tmp_path / "ex.jsonl.gz") == labelled + pseudo


def test_decoder_training_learns_a_term_bias_that_makes_vectors_sparse(tmp_path):
    """Mistral-SPLADE: LoRA + a per-term bias; untrained decoder vectors keep most of the vocabulary."""
    from sparsa.retrieval.splade import TERM_BIAS_FILE

    encoder_config = SpladeConfig.mistral_splade(device="cpu", max_length=48)
    config = SpladeTrainConfig(encoder=encoder_config, steps=1, initial_doc_terms=64, lora_rank=4, **TINY)
    out = train_splade(EXAMPLES, tmp_path / "decoder", config, device="cpu", show_progress=False)
    assert (out / TERM_BIAS_FILE).is_file()
    text = [EXAMPLES[0].positive]
    trained = SpladeEncoder(SpladeConfig.mistral_splade(model=str(out), device="cpu", max_length=48))
    plain = SpladeEncoder(encoder_config)
    trained_nnz, plain_nnz = trained.encode_documents(text)[0].nnz, plain.encode_documents(text)[0].nnz
    assert 0 < trained_nnz < 1000 < plain_nnz
