"""TILDEv2 reranking from a precomputed passage store: no neural model at query time.

At indexing time (:func:`build_tildev2_store`) each passage is expanded with TILDE
(:mod:`sparsa.rerank.tilde_expansion`) and weighed by the TILDEv2 encoder
(:mod:`sparsa.rerank.tilde_model`); the store keeps, per passage, only the tokens present in the
expanded passage with a positive weight, as sorted token ids and their max weight:

- ``token_ids.npy``: ``uint16[nnz]`` (``int32`` when the vocabulary exceeds 65,536)
- ``weights.npy``: ``float16[nnz]``
- ``offsets.npy``: ``int64[n_passages + 1]``, passage ``i`` owns ``[offsets[i], offsets[i+1])``
- ``doc_ids.json``, ``tokenizer.json`` (the query side needs only this), ``sparsa.json``.

The build is a job like an index build (:func:`build_tildev2_store_job`, ``sparsa rerank-store``):
atomic, resumable from checkpointed shards, refusing to replace a published store unless asked.

At query time :class:`TildeV2Reranker` tokenises the query and scores all candidates at once: a
vectorised binary search of every (candidate, query token) pair in the candidates' sorted ids.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sparsa.artifacts import atomic_dir, read_manifest, write_manifest
from sparsa.errors import ConfigError, IndexCorruptError
from sparsa.progress import progress_bar
from sparsa.rerank.tokens import PassageTokenizer
from sparsa.types import Document, Hit, Query, sort_hits

logger = logging.getLogger(__name__)

KIND = "tildev2-store"
_ARRAYS = ("token_ids", "weights", "offsets")
SHARD_SIZE = 4096  # passages per checkpointed shard of a store build


def tildev2_score_ref(query_ids: Sequence[int], passage: Mapping[int, float]) -> float:
    """The TILDEv2 score in plain Python: sum over query tokens (with repeats) of the passage's weight."""
    return float(sum(passage.get(int(t), 0.0) for t in query_ids))


class TildeV2Store:
    """Per-passage (token id -> max weight) tables, memory-mapped from a store folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        self.manifest = read_manifest(self.folder, kind=KIND)
        try:
            arrays = {name: np.load(self.folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
            self.doc_ids: list[str] = json.loads((self.folder / "doc_ids.json").read_text())
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(f"{self.folder}: unreadable TILDEv2 store ({exc})") from None
        self.token_ids, self.weights, self.offsets = arrays["token_ids"], arrays["weights"], arrays["offsets"]
        if (len(self.offsets) != len(self.doc_ids) + 1 or self.offsets[-1] != len(self.token_ids)
                or len(self.weights) != len(self.token_ids)):
            raise IndexCorruptError(f"{self.folder}: arrays and doc ids disagree in length")
        self.row = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}
        self.tokenizer = PassageTokenizer(self.folder / "tokenizer.json")

    def __len__(self) -> int:
        return len(self.doc_ids)

    def rows(self, doc_ids: Sequence[str]) -> np.ndarray:
        """``int64[n]`` store rows of ``doc_ids``; unknown ids are an error (the store must cover them)."""
        try:
            return np.fromiter((self.row[d] for d in doc_ids), dtype=np.int64, count=len(doc_ids))
        except KeyError as exc:
            raise ConfigError(f"document {exc.args[0]!r} is not in the TILDEv2 store {self.folder} "
                              f"({len(self)} passages); build the store over "
                              "the candidates' corpus") from None

    def passage(self, doc_id: str) -> dict[int, float]:
        """A passage's token id -> weight table (for inspection and tests)."""
        i = self.row[doc_id]
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return dict(zip(self.token_ids[lo:hi].tolist(), self.weights[lo:hi].astype(np.float32).tolist(),
                        strict=True))

    def score(self, query_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``float32[n]`` TILDEv2 scores of one query's token ids against the passages at ``rows``."""
        if len(query_ids) == 0 or len(rows) == 0 or len(self.token_ids) == 0:
            return np.zeros(len(rows), dtype=np.float32)
        terms, counts = np.unique(query_ids, return_counts=True)
        lo = np.repeat(self.offsets[rows], len(terms)).reshape(len(rows), len(terms))
        hi = np.repeat(self.offsets[rows + 1], len(terms)).reshape(len(rows), len(terms))
        target = np.broadcast_to(terms.astype(self.token_ids.dtype), lo.shape)
        while True:  # lower bound of each term in each passage's sorted ids, all pairs at once
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) >> 1
            below = self.token_ids[np.where(active, mid, 0)] < target
            lo = np.where(active & below, mid + 1, lo)
            hi = np.where(active & ~below, mid, hi)
        end = self.offsets[rows + 1][:, None]
        safe = np.minimum(lo, len(self.token_ids) - 1)
        found = (lo < end) & (self.token_ids[safe] == target)
        weights = np.where(found, self.weights[safe].astype(np.float32), np.float32(0))
        return weights @ counts.astype(np.float32)

    @property
    def bytes_per_passage(self) -> float:
        size = sum((self.folder / f"{name}.npy").stat().st_size for name in _ARRAYS)
        return size / max(1, len(self))


def build_tildev2_store(documents: Sequence[Document], out: str | Path, encoder: object,
                        expander: object | None = None, show_progress: bool | None = None,
                        shard_size: int = SHARD_SIZE, corpus_name: str | None = None) -> Path:
    """Expand (with ``expander``: a TildeExpander), weigh (``encoder``: a TildeV2Encoder) and store passages.

    Texts are ``Document.full_text``. Like an index build, the job runs in ``.<name>.building``: passages
    are encoded in checkpointed shards of ``shard_size`` (``sparsa.indexes.shards``: a killed job
    resumes from its finished shards) and the folder replaces ``out`` in one rename, ``sparsa.json``
    (with the corpus's identity) written last.
    """
    from sparsa.artifacts import corpus_identity
    from sparsa.indexes.shards import clear_job, run_in_shards
    from sparsa.types import Corpus

    if not documents:
        raise ConfigError("no documents to store")
    if len({d.id for d in documents}) != len(documents):
        raise ConfigError("document ids must be unique")
    started = time.perf_counter()
    tok = encoder.tokenizer
    if tok.vocab_size > 2**31:
        raise ConfigError("vocabulary too large for int32 token ids")
    id_dtype = np.uint16 if tok.vocab_size <= 2**16 else np.int32
    block = encoder.config.batch_size * 8  # expansion and weighing run in blocks, length-sorted inside
    shard_size = max(block, shard_size // block * block)  # whole blocks: tables equal an unsharded run's
    spec = {"encoder": {"path": str(encoder.path), "config": asdict(encoder.config)},
            "expander": {"path": str(expander.path), "config": asdict(expander.config)} if expander else None}

    def encode(docs: list[Document]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, weights, lengths = [], [], []
        for begin in range(0, len(docs), block):
            for token_ids, token_weights in _encode_block(docs[begin: begin + block], encoder, expander):
                ids.append(token_ids.astype(id_dtype))
                weights.append(token_weights.astype(np.float16))
                lengths.append(len(token_ids))
        return (np.concatenate(ids) if ids else np.zeros(0, id_dtype),
                np.concatenate(weights) if weights else np.zeros(0, np.float16),
                np.asarray(lengths, np.int64))

    corpus = Corpus(list(documents))
    with atomic_dir(out, resume=True) as work:
        parts = run_in_shards(corpus, work, spec, shard_size, encode, _save_shard, _load_shard,
                              fmt=KIND, show_progress=show_progress)
        offsets = np.zeros(len(documents) + 1, dtype=np.int64)
        np.cumsum(np.concatenate([lengths for *_, lengths in parts]), out=offsets[1:])
        np.save(work / "token_ids.npy", np.concatenate([ids for ids, *_ in parts]).astype(id_dtype))
        np.save(work / "weights.npy", np.concatenate([weights for _, weights, _ in parts]).astype(np.float16))
        np.save(work / "offsets.npy", offsets)
        clear_job(work)
        (work / "doc_ids.json").write_text(json.dumps([d.id for d in documents]))
        (work / "tokenizer.json").write_bytes(tok.path.read_bytes())
        nbytes = sum((work / f"{name}.npy").stat().st_size for name in _ARRAYS)
        write_manifest(
            work, KIND, num_passages=len(documents), nnz=int(offsets[-1]),
            tokens_per_passage=round(float(offsets[-1]) / len(documents), 1),
            bytes=nbytes, bytes_per_passage=round(nbytes / len(documents), 1), **spec,
            corpus=corpus_identity((d.id for d in documents), corpus_name),
            build_seconds=round(time.perf_counter() - started, 1))
    logger.info("TILDEv2 store of %d passages in %s (%.1f s)", len(documents), out,
                time.perf_counter() - started)
    return Path(out)


def _encode_block(docs: Sequence[Document], encoder, expander) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (token ids, weights) table of each document, expanded and weighed length-sorted."""
    from sparsa.rerank.tilde_expansion import ExpandedPassage

    texts = [d.full_text for d in docs]
    if expander is not None:
        expanded = expander.expand(texts, show_progress=False)
    else:
        expanded = [ExpandedPassage(p, np.zeros(0, np.int32))
                    for p in encoder.tokenizer.ids(texts, encoder.config.max_passage_tokens)]
    order = np.argsort([-len(p.passage) for p in expanded], kind="stable")
    encoded: list = [None] * len(expanded)
    for b in range(0, len(order), encoder.config.batch_size):
        chosen = order[b: b + encoder.config.batch_size]
        for i, table in zip(chosen, encoder.encode([expanded[i] for i in chosen]), strict=True):
            encoded[i] = table
    return encoded


def _save_shard(part: tuple[np.ndarray, np.ndarray, np.ndarray], folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, array in zip(("token_ids", "weights", "lengths"), part, strict=True):
        np.save(folder / f"{name}.npy", array)


def _load_shard(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        return tuple(np.load(folder / f"{name}.npy") for name in ("token_ids", "weights", "lengths"))
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"{folder}: unreadable store shard ({exc}); delete it to rebuild") from None


def build_tildev2_store_job(corpus, out: str | Path, model: str | Path, expander: str | Path | None = "auto",
                            device: str = "cpu", replace: bool = False, corpus_name: str | None = None,
                            shard_size: int = SHARD_SIZE, show_progress: bool | None = None,
                            batch_size: int | None = None) -> Path:
    """The job behind ``sparsa rerank-store``: a store of ``corpus`` (a :class:`sparsa.types.Corpus`) with
    the TILDEv2 model folder ``model``. ``expander``: a TILDE model folder, ``"auto"`` (the one the model
    was trained with, as its manifest records) or None (no expansion). A published store at ``out`` is
    replaced only with ``replace``; an interrupted job resumes. ``batch_size``: passages weighed together
    (default the model's own setting)."""
    from sparsa.artifacts import MANIFEST
    from sparsa.rerank.tilde_expansion import TildeExpander
    from sparsa.rerank.tilde_model import KIND as MODEL_KIND
    from sparsa.rerank.tilde_model import TildeV2Encoder

    if not replace and (Path(out).expanduser() / MANIFEST).is_file():
        raise ConfigError(f"a store already exists at {out}; pass replace=True (--replace) to replace it "
                          "once the new one is built")
    if expander == "auto":
        expander = read_manifest(model, kind=MODEL_KIND).get("training", {}).get("expander")
        if expander is not None and not Path(expander).is_dir():
            raise ConfigError(f"{model} was trained with the expander {expander}, which is gone; give "
                              "--expander FOLDER or --no-expansion")
    encoder = TildeV2Encoder.load(model, device)
    if batch_size is not None:
        encoder.config = dataclasses.replace(encoder.config, batch_size=batch_size)
    tilde = TildeExpander.load(expander, device) if expander is not None else None
    return build_tildev2_store(corpus.documents, out, encoder, tilde, show_progress, shard_size, corpus_name)


class TildeV2Reranker:
    """Rerank candidates by TILDEv2 scores from a store; needs only the tokenizer at query time."""

    def __init__(self, store: TildeV2Store):
        self.store = store

    @classmethod
    def open(cls, path: str | Path) -> TildeV2Reranker:
        """Open a store folder written by :func:`build_tildev2_store`."""
        return cls(TildeV2Store(path))

    load = open  # the uniform constructor the CLI uses: ``RERANKERS.get(name).load(path)``

    def rerank(self, query: Query, candidates: Sequence[Document], top_k: int | None = None) -> list[Hit]:
        """Candidates by descending TILDEv2 score (ties by doc id), at most ``top_k`` of them."""
        return self._rank(self.store.tokenizer.query_ids(query.text), candidates, top_k)

    def rerank_batch(self, queries: Sequence[Query], candidates: Sequence[Sequence[Document]],
                     top_k: int | None = None, show_progress: bool | None = None) -> list[list[Hit]]:
        """:meth:`rerank` for many queries (query ``i`` with ``candidates[i]``), tokenising in one call."""
        if len(queries) != len(candidates):
            raise ConfigError(f"{len(queries)} queries but {len(candidates)} candidate lists")
        query_ids = self.store.tokenizer.ids([q.text for q in queries])
        ranked = []
        with progress_bar(len(queries), "TILDEv2 reranking", unit="query", show=show_progress) as bar:
            for ids, docs in zip(query_ids, candidates, strict=True):
                ranked.append(self._rank(ids, docs, top_k))
                bar.update(1)
        return ranked

    def _rank(self, query_ids: np.ndarray, candidates: Sequence[Document], top_k: int | None) -> list[Hit]:
        doc_ids = [d.id for d in candidates]
        scores = self.store.score(query_ids, self.store.rows(doc_ids))
        hits = sort_hits([Hit(d, float(s)) for d, s in zip(doc_ids, scores.tolist(), strict=True)])
        return hits[:top_k] if top_k is not None else hits
