"""The real reader (SmolLM2-135M-Instruct from the model registry) and three tiny passages."""

from __future__ import annotations

import pytest

from sparsa.types import Corpus, Document

PASSAGES = [
    Document("eiffel", "The Eiffel Tower in Paris was completed in 1889.", "Eiffel Tower"),
    Document("fuji", "Mount Fuji is the highest mountain in Japan, 3,776 metres tall.", "Mount Fuji"),
    Document("amazon", "The Amazon river flows through Peru, Colombia and Brazil.", "Amazon River"),
]


@pytest.fixture(scope="session")
def reader():
    from sparsa.rag.reader import Reader, ReaderConfig

    return Reader(ReaderConfig(max_new_tokens=8, max_context_tokens=200))


@pytest.fixture(scope="session")
def passages() -> Corpus:
    return Corpus(PASSAGES)


@pytest.fixture(scope="session")
def tiny_bm25(tmp_path_factory, passages):
    """A real Lucene BM25 index over the three passages, and their corpus file: (index, corpus.jsonl)."""
    import json

    from tests.conftest import needs_java

    needs_java()
    from sparsa.indexes import build_index

    folder = tmp_path_factory.mktemp("rag")
    corpus_file = folder / "corpus.jsonl"
    corpus_file.write_text("".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n"
                                   for d in passages.documents))
    return build_index("bm25", passages, folder / "index", show_progress=False, threads=1), corpus_file
