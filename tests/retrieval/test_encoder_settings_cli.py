"""Encoder settings from the CLI, on real SciFact abstracts and the real registry models: dense pooling,
normalisation and prefixes ('sparsa index --kind dense', 'sparsa train dense') for a model folder
without sentence-transformers files; 'sparsa train splade' negatives, LoRA rank and --decoder defaults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparsa.cli.main import main


@pytest.fixture(scope="module")
def abstracts(scifact, tmp_path_factory) -> Path:
    """A BEIR folder: 24 SciFact abstracts and 4 train-like queries (their titles) judged on them."""
    folder = tmp_path_factory.mktemp("abstracts")
    docs = [d for d in scifact.corpus.documents[:40] if d.title.strip()][:24]
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"_id": f"q{i}", "text": d.title}) + "\n" for i, d in enumerate(docs[:4])))
    (folder / "qrels").mkdir()
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\t{d.id}\t1\n" for i, d in enumerate(docs[:4])))
    return folder


@pytest.fixture(scope="module")
def bare_minilm(tmp_path_factory) -> Path:
    """minilm-l6 as a bare transformers folder: weights and tokenizer, no sentence-transformers files."""
    from sparsa.models import resolve_model

    source, folder = Path(resolve_model("minilm-l6")), tmp_path_factory.mktemp("bare") / "minilm-bare"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        (folder / name).symlink_to(source / name)
    return folder


def _index(*argv: str) -> int:
    return main(["-q", "index", "--kind", "dense", "--device", "cpu", *argv])


def test_dense_index_needs_pooling_for_a_bare_folder_and_keeps_prefixes(abstracts, bare_minilm, tmp_path,
                                                                          capsys):
    from sparsa.search import open_retriever

    assert _index("--dataset", str(abstracts), "--model", str(bare_minilm), "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert "no sentence-transformers files" in err and "--pooling" in err and not (tmp_path / "x").exists()
    assert main(["-q", "index", "--dataset", str(abstracts), "--pooling", "mean", "--out",
                 str(tmp_path / "b")]) == 2
    assert "--pooling is a dense index setting, not bm25's" in capsys.readouterr().err
    prefixes = ["--query-prefix", "query: ", "--doc-prefix", "passage: "]
    bare, st = tmp_path / "bare", tmp_path / "st"
    assert _index("--dataset", str(abstracts), "--model", str(bare_minilm), "--pooling", "mean",
                  "--normalize", *prefixes, "--out", str(bare)) == 0
    assert _index("--dataset", str(abstracts), "--model", "minilm-l6", *prefixes, "--out", str(st)) == 0
    spec = json.loads((bare / "sparsa.json").read_text())["encoder"]["config"]
    assert (spec["pooling"], spec["normalize"], spec["query_prefix"], spec["doc_prefix"]) == \
        ("mean", True, "query: ", "passage: ")
    # minilm-l6's own files say mean pooling + normalisation: the same query vectors (prefix included);
    # documents differ only by length (its files cut at 256 tokens, the bare tokenizer at 512)
    retriever, reference = open_retriever(str(bare)), open_retriever(str(st))
    assert retriever.encoder.config.query_prefix == "query: " and retriever.encoder.max_length == 512
    queries = ["vitamin D and bone", "query: vitamin D and bone"]
    np.testing.assert_allclose(retriever.encoder.encode_queries(queries),
                               reference.encoder.encode_queries(queries), atol=1e-6)
    assert not np.allclose(*retriever.encoder.encode_queries(queries))  # the prefix is applied once more
    assert np.linalg.norm(retriever.index.vectors, axis=1) == pytest.approx(1.0, abs=1e-3)  # --normalize


def test_train_dense_declares_what_it_used(abstracts, bare_minilm, tmp_path, capsys):
    from sparsa.retrieval.dense import DenseConfig, DenseEncoder, folder_prompts

    base = ["-q", "train", "dense", "--dataset", str(abstracts), "--model", str(bare_minilm), "--task", "ict",
            "--steps", "2", "--batch-size", "4", "--max-passage-length", "32", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "x")]) == 2
    assert "--pooling mean|cls|max" in capsys.readouterr().err
    out = tmp_path / "model"
    assert main([*base, "--pooling", "cls", "--no-normalize", "--query-prefix", "query: ", "--out",
                 str(out)]) == 0
    assert "--query-prefix 'query: '" in capsys.readouterr().err
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"] is True
    assert folder_prompts(out) == {"query": "query: ", "document": ""}
    encoder = DenseEncoder(DenseConfig(model=str(out), device="cpu", query_prefix="query: "))
    assert (encoder.pooling, encoder.normalize) == ("cls", False)
    record = json.loads((out / "sparsa.json").read_text())
    assert record["config"]["query_prefix"] == "query: " and record["config"]["pooling"] == "cls"


@pytest.fixture(scope="module")
def examples_file(shared_data, tmp_path_factory) -> Path:
    """Training examples from SciFact train judgements: query, relevant abstract, 3 other abstracts."""
    from sparsa.data import load_dataset

    train = load_dataset(shared_data / "scifact", "train")
    queries = sorted(train.queries, key=lambda q: int(q.id))[:6]
    others = train.corpus.documents[:40]
    rows = []
    for i, q in enumerate(queries):
        relevant = next(iter(train.qrels[q.id]))
        negatives = [d.full_text for d in others if d.id != relevant][3 * i: 3 * i + 3]
        rows.append({"query": q.text, "positive": train.corpus[relevant].full_text, "negatives": negatives})
    path = tmp_path_factory.mktemp("splade") / "examples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_splade_uses_every_negative(examples_file, tmp_path, capsys):
    out = tmp_path / "splade"
    argv = ["-q", "train", "splade", "--examples", str(examples_file), "--steps", "1", "--batch-size", "2",
            "--device", "cpu"]
    assert main([*argv, "--negatives", "2", "--gradient-checkpointing", "--checkpoint-every", "7",
                 "--out", str(out)]) == 0
    config = json.loads((out / "sparsa.json").read_text())["config"]
    assert config["negatives_per_query"] == 2 and config["lr"] == 5e-5
    assert config["gradient_checkpointing"] and config["checkpoint_every"] == 7
    assert config["encoder"]["model"] == "splade-tiny"
    assert main([*argv, "--negatives", "9", "--out", str(tmp_path / "all")]) == 0
    assert "3 hard negatives each" in capsys.readouterr().err  # every negative the file holds
    assert json.loads((tmp_path / "all" / "sparsa.json").read_text())["config"]["negatives_per_query"] == 3


def test_train_splade_decoder_defaults_and_errors(examples_file, tmp_path, capsys):
    argv = ["-q", "train", "splade", "--examples", str(examples_file), "--decoder", "--device", "cpu"]
    assert main([*argv, "--model", "splade-tiny", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "splade-tiny is a masked LM" in err and "Traceback" not in err
    out = tmp_path / "mistral-splade"
    assert main([*argv, "--steps", "1", "--batch-size", "2", "--lora-rank", "4", "--out", str(out)]) == 0
    config = json.loads((out / "sparsa.json").read_text())["config"]
    assert config["encoder"]["model"] == "smollm2-135m-instruct"
    assert config["encoder"]["architecture"] == "causal-lm"
    assert (config["lr"], config["warmup_steps"], config["lora_rank"], config["negatives_per_query"]) == \
        (2e-4, 50, 4, 3)


def test_index_max_tokens_sets_the_encoder_batches(abstracts, tmp_path, capsys):
    """--max-tokens reaches the encoder and its manifest (splade and dense); other kinds refuse it."""
    from sparsa.search import open_retriever

    assert main(["-q", "index", "--dataset", str(abstracts), "--max-tokens", "2048", "--out",
                 str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "--max-tokens sets an encoder's batches: splade and dense indexes, not bm25" in err
    for kind in ("splade", "dense"):
        out = tmp_path / kind
        assert main(["-q", "index", "--dataset", str(abstracts), "--kind", kind, "--device", "cpu",
                     "--max-tokens", "2048", "--out", str(out)]) == 0
        assert json.loads((out / "sparsa.json").read_text())["encoder"]["config"]["max_tokens"] == 2048
        retriever = open_retriever(str(out))
        assert retriever.encoder.config.max_tokens == 2048
        assert retriever.search_text("vitamin D", k=3)  # the index answers


def test_gpu_out_of_memory_is_an_error_line_naming_the_knobs(abstracts, tmp_path, monkeypatch, capsys):
    """torch's OutOfMemoryError (raised here where the job would encode) prints one error line, exit 2."""
    import torch

    import sparsa.indexes

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(sparsa.indexes, "build_index_job", out_of_memory)
    assert main(["-q", "index", "--dataset", str(abstracts), "--kind", "splade", "--out",
                 str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "the GPU ran out of memory (CUDA out of memory. Tried to allocate 8.00 GiB)" in err
    assert "--max-tokens" in err and "Traceback" not in err
