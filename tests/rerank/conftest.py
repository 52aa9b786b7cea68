"""Real splade-tiny models (untrained TILDE head and fresh TILDEv2 head) over a small SciFact slice."""

from __future__ import annotations

import pytest

from sparsa.data import Dataset
from sparsa.types import Document


@pytest.fixture(scope="session")
def tilde_expander():
    from sparsa.rerank.tilde_expansion import TildeConfig, TildeExpander

    return TildeExpander(TildeConfig(max_passage_tokens=64, expansion_terms=8, batch_size=8))


@pytest.fixture(scope="session")
def tildev2_encoder():
    from sparsa.rerank.tilde_model import TildeV2Config, TildeV2Encoder

    return TildeV2Encoder(TildeV2Config(max_passage_tokens=64, batch_size=8))


@pytest.fixture(scope="session")
def scifact_slice(scifact: Dataset) -> tuple[list, list[Document]]:
    """Five test queries and a corpus slice holding their relevant documents plus 25 others."""
    queries = sorted(scifact.queries, key=lambda q: int(q.id))[:5]
    wanted = {d for q in queries for d in scifact.qrels[q.id]}
    docs = [scifact.corpus[d] for d in sorted(wanted)]
    docs += [d for d in scifact.corpus.documents[:40] if d.id not in wanted][:25]
    return queries, docs


@pytest.fixture(scope="session")
def tilde_store(tmp_path_factory, scifact_slice, tildev2_encoder, tilde_expander):
    from sparsa.rerank.tilde import build_tildev2_store

    _, docs = scifact_slice
    return build_tildev2_store(docs, tmp_path_factory.mktemp("rerank") / "store", tildev2_encoder,
                               tilde_expander, show_progress=False)
