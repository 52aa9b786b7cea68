"""The service's contract: pydantic request and response models, with every limit a client must know.

Every error is ``ErrorBody`` (``{"detail": "<one line>"}``), 422 included; ``error_responses`` documents
them per route. Core types (``Hit``, ``Document``) never appear here; handlers convert them with the
helpers at the end.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

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
    fusion: Literal["rrf", "interp"] = Field(
        "rrf", description="hybrid only: reciprocal rank fusion, or interpolation of normalised scores")
    weights: dict[Literal["bm25", "splade", "dense"], Annotated[float, Field(ge=0, le=1000)]] | None = Field(
        None, description="hybrid only: a weight per served retriever (default 1 each; 0 leaves one out)")
    normalisation: Literal["minmax", "zscore"] = Field("minmax", description="hybrid interp only: per-query "
                                                       "score normalisation")
    rrf_k: float = Field(60.0, ge=0, le=10_000,
                         description="hybrid rrf only: the constant of 1 / (rrf_k + rank)")
    as_of: datetime.date | None = Field(
        None, description="only documents dated on or before this day (the corpus's metadata.date, "
                          "YYYY-MM-DD; undated ones stay); a server with an event-aware query encoder "
                          "(sparsa serve --event-encoder) also encodes dense queries as of this day")

    @model_validator(mode="after")
    def _fusion_for_hybrid(self) -> SearchRequest:
        defaults = (("fusion", "rrf"), ("weights", None), ("normalisation", "minmax"), ("rrf_k", 60.0))
        changed = [name for name, default in defaults if getattr(self, name) != default]
        if changed and self.retriever != "hybrid":
            raise ValueError(f"{', '.join(changed)}: fusion settings apply to retriever 'hybrid' only")
        return self


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
    id: str = Field("", max_length=200, description="returned as the hit's doc_id; without one the hit's "
                    "doc_id is '#<position>' (0-based). Ids must be unique within a request")
    text: str = Field(min_length=1, max_length=MAX_PASSAGE_CHARS)
    title: str = Field("", max_length=1000)


DocId = Annotated[str, StringConstraints(min_length=1, max_length=200)]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # absent, not null: see the one-of rule


def passage_ids(passages: list[Passage]) -> list[str]:
    """The doc_id each passage is returned under: its own id, else ``#<position>``."""
    return [p.id or f"#{i}" for i, p in enumerate(passages)]


class RerankRequest(Strict):
    """Candidates as passages (any text) or as document ids of the served corpus: exactly one of the two."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["passages"]}, {"required": ["doc_ids"]}]})
    query: QueryText
    # Not nullable: the one-of rule above is exactly what the server checks.
    passages: list[Passage] = Field(None, min_length=1, max_length=MAX_CANDIDATES,  # type: ignore[assignment]
                                    description="candidate passages (unique ids); or give doc_ids",
                                    json_schema_extra=_no_default)
    doc_ids: list[DocId] = Field(None, min_length=1, max_length=MAX_CANDIDATES,  # type: ignore[assignment]
                                 description="ids of the served corpus; or give passages",
                                 json_schema_extra=_no_default)

    @model_validator(mode="after")
    def _one_source(self) -> RerankRequest:
        if (self.passages is None) == (self.doc_ids is None):
            raise ValueError("give exactly one of 'passages' or 'doc_ids'")
        if self.passages is not None:
            ids = passage_ids(self.passages)
            repeated = sorted({i for i in ids if ids.count(i) > 1})
            if repeated:
                shown = ", ".join(map(repr, repeated[:5]))
                raise ValueError(f"passage ids must be unique; repeated: {shown}")
        return self


class RerankResponse(BaseModel):
    query: str
    reranker: str
    hits: list[SearchHit]
    took_ms: float


class QARequest(Strict):
    question: QueryText
    mode: Literal["auto", "retrieve", "recall"] = Field(
        "auto", description="auto: the router decides; retrieve: read retrieved passages; recall: model "
                            "memory only")
    as_of: datetime.date | None = Field(
        None, description="read only passages dated on or before this day (YYYY-MM-DD; undated ones stay)")


class Knowledge(BaseModel):
    kind: str = Field(description="entities, relations or path")
    text: str
    score: float
    gate: float | None = Field(None, description="Amar's relevance gate (with a trained head)")
    shown: bool = Field(description="whether the reader's prompt holds it")


class QAResponse(BaseModel):
    question: str
    answer: str
    citations: list[str]
    route: str = Field(description="retrieve, recall, or kg (answered from the knowledge graph)")
    passages: list[SearchHit]
    timings: dict[str, float]
    knowledge: list[Knowledge] = Field([], description="route kg: the graph knowledge retrieved")


class CorpusIdentity(BaseModel):
    """The corpus an index was built from, as its manifest records it (none for indexes built before)."""

    name: str | None = None
    documents: int | None = None
    doc_ids_sha256: str | None = None


class LoadedIndex(BaseModel):
    retriever: str
    path: str
    kind: str
    num_documents: int | None = None
    built_at: str | None = None
    corpus: CorpusIdentity | None = None


class StoredIndex(BaseModel):
    name: str
    kind: str | None
    valid: bool
    checked: Literal["size", "sha256"] = Field("size", description="how the files were checked: sizes (the "
                                               "default listing) or full checksums (?verify=sha256)")
    corpus: CorpusIdentity | None = None
    detail: str = ""


class IndexList(BaseModel):
    loaded: list[LoadedIndex]
    stored: list[StoredIndex]


class BuildRequest(Strict):
    name: IndexName = Field(description="index name under the server's index folder")
    kind: Literal["bm25", "splade", "dense"] = Field(
        "bm25", description="bm25 (Lucene), splade (exact backend) or dense (flat)")
    dataset: IndexName = Field(description="dataset name under the server's data folder, e.g. scifact")
    model: IndexName | None = Field(
        None, description="splade/dense encoder: a built-in model (sparsa models list; pulled on the server "
                          "beforehand) or a model folder under the server's $SPARSA_HOME/models; default "
                          "splade-tiny / minilm-l6. A dense model needs sentence-transformers files")
    replace: bool = Field(False, description="replace a stored index of that name once the new one is built "
                          "(an index being served is never replaced: build under a new name and swap)")


class BuildJob(BaseModel):
    id: str
    name: str
    kind: str
    dataset: str
    replace: bool = False
    model: str | None = None
    state: Literal["running", "succeeded", "failed"]
    pid: int | None
    returncode: int | None = None
    detail: str = Field("", description="why a build failed")
    started_at: str | None = None
    finished_at: str | None = None
    log_tail: str = ""


class SwapRequest(Strict):
    retriever: Literal["bm25", "splade", "dense"]
    name: IndexName = Field(description="a stored index (see GET /indexes) to serve for this retriever")


class Health(BaseModel):
    ready: bool
    indexes: dict[str, str] = Field(description="retriever -> index: its folder name, or its path on the "
                                    "server for a caller with the API key")
    reranker: str | None
    qa: bool
    problems: list[str]
    warnings: list[str] = []


class ErrorBody(BaseModel):
    """Every error the service answers (422 included)."""

    detail: str = Field(description="what went wrong, in one line")


_ERRORS = {
    400: "invalid request for this server (e.g. a retriever it does not serve, non-UTF-8 JSON, too much work "
         "for the time limit)",
    401: "missing API key",
    403: "wrong API key, or index management disabled",
    404: "not found",
    408: "the request body did not arrive in time",
    409: "conflict: an index of another corpus, a corrupt index, or a build that would overwrite one",
    413: "request body too large",
    422: "the body does not match the schema",
    429: "too many wrong API keys from this address, or too many builds; see Retry-After",
    503: "not ready, not configured, or busy: the endpoint's queue is full; see Retry-After",
    504: "the request passed the server's time limit; its work was stopped",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                 "schema": {"type": "integer"}}}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, all with ``ErrorBody``."""
    return {code: {"model": ErrorBody, "description": _ERRORS[code],
                   **({"headers": _RETRY_AFTER} if code in (429, 503) else {})} for code in codes}


def to_hits(hits, corpus, include_text: bool = True) -> list[SearchHit]:
    """Core ``Hit``s (ranked) -> response hits, with title and text from ``corpus`` (a
    ``sparsa.docstore.DocumentSource``: one look-up for all hits) when asked."""
    found = corpus.fetch([hit.doc_id for hit in hits]) if (include_text and corpus is not None) else None
    out = []
    for rank, hit in enumerate(hits, start=1):
        doc = found[rank - 1] if found else None
        out.append(SearchHit(rank=rank, doc_id=hit.doc_id, score=float(hit.score),
                             title=doc.title if doc else None, text=doc.text if doc else None))
    return out
