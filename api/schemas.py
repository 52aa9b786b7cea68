"""The service's contract: pydantic request and response models, with every limit a client must know.

Core types (``Hit``, ``Document``) never appear here; handlers convert them with the helpers at the end.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

MAX_K = 1000
MAX_QUERY_CHARS = 2000
MAX_PASSAGE_CHARS = 20_000
MAX_CANDIDATES = 100
MAX_RERANK_DEPTH = 100

Retriever = Literal["bm25", "splade", "dense", "hybrid"]
QueryText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY_CHARS)]
IndexName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class SearchRequest(Strict):
    query: QueryText = Field(description=f"the query text (1 to {MAX_QUERY_CHARS} characters)")
    retriever: Retriever = "bm25"
    k: int = Field(10, ge=1, le=MAX_K, description=f"hits to return (1 to {MAX_K})")
    rerank: bool = Field(False, description="rerank the top `rerank_depth` hits with the server's reranker")
    rerank_depth: int = Field(20, ge=1, le=MAX_RERANK_DEPTH)
    include_text: bool = Field(True, description="return each hit's title and text")


class SearchHit(BaseModel):
    rank: int
    doc_id: str
    score: float
    title: str | None = None
    text: str | None = None


class SearchResponse(BaseModel):
    query: str
    retriever: Retriever
    reranked: bool
    hits: list[SearchHit]
    took_ms: float


class Passage(Strict):
    id: str = Field("", max_length=200)
    text: str = Field(min_length=1, max_length=MAX_PASSAGE_CHARS)
    title: str = Field("", max_length=1000)


class RerankRequest(Strict):
    """Candidates as passages (any text) or as document ids of the served corpus: exactly one of the two."""

    query: QueryText
    passages: list[Passage] | None = Field(None, min_length=1, max_length=MAX_CANDIDATES)
    doc_ids: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = Field(
        None, min_length=1, max_length=MAX_CANDIDATES)

    @model_validator(mode="after")
    def _one_source(self) -> RerankRequest:
        if (self.passages is None) == (self.doc_ids is None):
            raise ValueError("give exactly one of 'passages' or 'doc_ids'")
        return self


class RerankResponse(BaseModel):
    query: str
    reranker: str
    hits: list[SearchHit]
    took_ms: float


class QARequest(Strict):
    question: QueryText
    mode: Literal["auto", "retrieve", "recall"] = Field(
        "auto", description="auto: the router decides; retrieve: read retrieved passages; recall: model memory only")


class QAResponse(BaseModel):
    question: str
    answer: str
    citations: list[str]
    route: str
    passages: list[SearchHit]
    timings: dict[str, float]


class LoadedIndex(BaseModel):
    retriever: str
    path: str
    kind: str
    num_documents: int | None = None
    built_at: str | None = None


class StoredIndex(BaseModel):
    name: str
    kind: str | None
    valid: bool
    detail: str = ""


class IndexList(BaseModel):
    loaded: list[LoadedIndex]
    stored: list[StoredIndex]


class BuildRequest(Strict):
    name: IndexName = Field(description="index name under the server's index folder")
    kind: Literal["bm25", "splade", "dense"] = Field(
        "bm25", description="bm25 (Lucene), splade (splade-tiny, exact backend) or dense (minilm-l6, flat)")
    dataset: IndexName = Field(description="dataset name under the server's data folder, e.g. scifact")


class BuildJob(BaseModel):
    id: str
    name: str
    kind: str
    dataset: str
    state: Literal["running", "succeeded", "failed"]
    pid: int | None
    returncode: int | None = None
    log_tail: str = ""


class SwapRequest(Strict):
    retriever: Literal["bm25", "splade", "dense"]
    name: IndexName = Field(description="a stored index (see GET /indexes) to serve for this retriever")


class Health(BaseModel):
    ready: bool
    indexes: dict[str, str]
    reranker: str | None
    qa: bool
    problems: list[str]


class ErrorBody(BaseModel):
    detail: str


def to_hits(hits, corpus, include_text: bool = True) -> list[SearchHit]:
    """Core ``Hit``s (ranked) -> response hits, with title and text from ``corpus`` when asked."""
    out = []
    for rank, hit in enumerate(hits, start=1):
        doc = corpus.get(hit.doc_id) if (include_text and corpus is not None) else None
        out.append(SearchHit(rank=rank, doc_id=hit.doc_id, score=float(hit.score),
                             title=doc.title if doc else None, text=doc.text if doc else None))
    return out
