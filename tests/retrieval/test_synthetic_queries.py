"""Synthetic training queries ('sparsa generate-queries', issue 28) on real Cranfield abstracts with the real
SmolLM2-135M-Instruct from the registry (CPU): outputs cleaned and validated, generation resumed from its log,
the consistency filter keeping and dropping pairs by BM25 rank, and the trainers reading the pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsa.cli.main import main
from sparsa.errors import ConfigError, DataFormatError
from sparsa.retrieval.synthetic_queries import (
    DEFAULT_EXAMPLES,
    UNFINISHED,
    FewShotExample,
    GenerationConfig,
    QueryWriter,
    clean_query,
    filter_pairs,
    generate,
    log_path,
    read_examples,
)
from sparsa.retrieval.training_data import read_examples as read_training_examples
from sparsa.types import Corpus
from tests.conftest import needs_java

# Small enough for two shared CPU cores: documents and examples cut to 48 tokens, 12 new tokens.
TINY = {"max_doc_tokens": 48, "max_new_tokens": 12, "batch_size": 2, "device": "cpu"}
DOC = ("the boundary layer on a flat plate at high mach numbers was measured with a pitot probe and compared "
       "with the theory of heat transfer")


@pytest.fixture(scope="module")
def corpus_file(cranfield, tmp_path_factory) -> Path:
    """40 real Cranfield abstracts as a corpus JSONL file."""
    path = tmp_path_factory.mktemp("synthetic") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n"
                            for d in cranfield.corpus.documents[:40]))
    return path


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Two of the default few-shot examples (SciFact train claims): a shorter prompt on CPU."""
    path = tmp_path_factory.mktemp("shots") / "shots.jsonl"
    path.write_text("".join(DEFAULT_EXAMPLES.read_text().splitlines(keepends=True)[:2]))
    return path


@pytest.fixture(scope="module")
def writer(shots) -> QueryWriter:
    return QueryWriter(GenerationConfig(**TINY), read_examples(shots))


def test_clean_query_takes_the_first_sentence_and_rejects_bad_outputs():
    config = GenerationConfig(max_query_words=8, copy_min_words=6)
    shots = [FewShotExample("a document", "Beta-band coherence is diminished.")]
    assert clean_query('Query: "heat transfer at high mach numbers?" The study shows', DOC, shots, config) \
        == ("heat transfer at high mach numbers?", None)
    assert clean_query("\n\n", DOC, shots, config)[1] == "empty"
    assert clean_query("one two three four five six seven eight nine", DOC, shots, config)[1] == "too long"
    assert clean_query("beta-band coherence is diminished", DOC, shots, config)[1] == "copies an example"
    assert clean_query("The boundary layer on a flat plate", DOC, shots, config)[1] == "copies the document"
    assert clean_query("boundary layer flat plate", DOC, shots, config)[1] is None  # short spans are fine
    # cut off by max_new_tokens: unusable mid-sentence, fine once a sentence has ended
    assert clean_query("flow around a body moving" + UNFINISHED, DOC, shots, config)[1] == "too long"
    assert clean_query("Drag of cones. The flow around" + UNFINISHED, DOC, shots, config) \
        == ("Drag of cones.", None)


def test_few_shot_examples_file_errors_name_the_line(tmp_path):
    assert len(read_examples()) == 4
    bad = tmp_path / "shots.jsonl"
    bad.write_text('{"document": "a text", "query": "a query"}\n{"document": "a text"}\n')
    with pytest.raises(DataFormatError, match=r"shots.jsonl:2: expected non-empty"):
        read_examples(bad)


def test_generation_resumes_from_its_log(writer, cranfield, tmp_path):
    docs = cranfield.corpus.documents[:4]
    log = log_path(tmp_path / "pairs.jsonl.gz")
    assert log.name == "pairs.generated.jsonl"
    first = generate(writer.config, writer.examples, docs[:2], log, show_progress=False, writer=writer)
    assert [r["doc_id"] for r in first] == [d.id for d in docs[:2]]
    assert all(len(r["queries"]) == 1 and r["queries"][0]["raw"].strip() for r in first)
    # A job killed mid-line: the unfinished line is dropped and that document generated again.
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines) + '{"doc_id": "' + docs[2].id + '", "quer')
    records = generate(writer.config, writer.examples, docs, log, show_progress=False, writer=writer)
    lines = log.read_text().splitlines()
    assert len(lines) == 1 + 4  # settings, then one line per document: the two done ones were skipped
    assert [json.loads(line)["doc_id"] for line in lines[1:]] == [d.id for d in docs]
    assert records[:2] == first  # read back, not regenerated
    # all done: nothing to generate, so no LM loads (writer None)
    assert generate(writer.config, writer.examples, docs, log, show_progress=False) == records
    other = GenerationConfig(**{**TINY, "max_new_tokens": 13})  # other settings: the log refuses to resume
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(other, writer.examples, docs, log, show_progress=False)


def test_filter_keeps_and_drops_by_bm25_rank(cranfield, tmp_path):
    needs_java()
    from sparsa.indexes import build_index_job
    from sparsa.search import open_retriever

    corpus = Corpus(cranfield.corpus.documents[:40])
    bm25 = open_retriever(build_index_job("bm25", corpus, tmp_path / "bm25", show_progress=False))
    target = corpus.documents[5]
    records = [{"doc_id": target.id, "queries": [
        {"query": target.title, "rejected": None},  # its own title: rank 1
        {"query": "banana bread recipe with walnuts", "rejected": None},  # matches nothing
        {"query": "", "rejected": "empty"},  # rejected at generation: never searched
    ]}]
    rows, report = filter_pairs(records, corpus, bm25, keep_top=1, negatives=3)
    assert [(r["query"], r["rank"]) for r in rows] == [(target.title, 1)]
    assert len(rows[0]["negatives"]) == 3 and target.full_text not in rows[0]["negatives"]
    assert (report["valid"], report["kept"], report["keep_rate"]) == (2, 1, 0.5)
    assert report["rejected"] == {"empty": 1} and report["found_within"]["20"] == 1
    kept_all, report = filter_pairs(records, corpus, bm25, keep_top=0, negatives=3)
    assert [r["rank"] for r in kept_all] == [1, None] and report["keep_rate"] == 1.0


@pytest.mark.slow
def test_cli_pairs_train_a_decoder_splade(corpus_file, shots, tmp_path, capsys):
    """generate-queries --generate-only, then the filter -> the pairs file -> 'sparsa train splade --decoder'
    (one step)."""
    needs_java()
    out = tmp_path / "pairs.jsonl"
    argv = ["-q", "generate-queries", str(corpus_file), "--out", str(out), "--examples", str(shots),
            "--max-docs", "4", "--max-doc-tokens", "48", "--max-new-tokens", "32", "--batch-size", "4",
            "--keep-top", "0", "--negatives", "2", "--device", "cpu", "--report", str(tmp_path / "r.json")]
    assert main([*argv, "--generate-only"]) == 0  # the log only
    assert log_path(out).is_file() and not out.exists() and not (tmp_path / "r.json").exists()
    assert main(argv) == 0  # every document is in the log: the filter alone runs
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["documents"] == 4 and report["generated"] == 4 and report["keep_top"] == 0
    pairs = read_training_examples(out)
    assert len(pairs) == report["kept"] == report["valid"] >= 2
    assert all(p.query.strip() and len(p.negatives) == 2 and p.positive not in p.negatives for p in pairs)
    assert "kept" in capsys.readouterr().err
    model = tmp_path / "decoder-splade"
    assert main(["-q", "train", "splade", "--examples", str(out), "--decoder", "--steps", "1", "--batch-size",
                 "2", "--lora-rank", "4", "--device", "cpu", "--out", str(model)]) == 0
    assert json.loads((model / "sparsa.json").read_text())["config"]["negatives_per_query"] == 2
