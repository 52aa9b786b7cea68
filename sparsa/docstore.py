"""Documents by id, for turning hits into passages: in memory (``Corpus``) or on disk (``DocStore``).

``sparsa ask``, the QA pipeline and ``sparsa serve`` need a passage's title, text and meta for the few ids
a search returns, and the router needs document frequencies of a question's words. Both read a
:class:`DocumentSource`: ``fetch(ids)``, ``id in source``, ``len(source)``, ``identity`` (the corpus
identity index manifests record: ``sparsa.artifacts.corpus_identity``) and ``document_frequencies()``
(an object with ``get(word, 0)``). ``sparsa.types.Corpus`` is one, held in memory; :class:`DocStore` is
the other: one SQLite file (stdlib ``sqlite3``, opened read-only and immutable) with the documents by id
and the word document frequencies, built once per corpus by :func:`build_docstore` and read a few rows per
question, so a 10M-passage corpus serves in bounded memory.

A store is an artifact like an index (``sparsa.artifacts.atomic_dir``: built in ``.<name>.building``,
renamed into place when its manifest is written, so an interrupted build leaves no store). Its manifest
records the corpus identity (computed from the ids in sorted order, streamed from the id index) and the
corpus file it was built from (path, size, mtime), so a stale store is rebuilt and a store of another
corpus is refused (:func:`check_source`). :func:`open_documents` is what ``--dataset`` means everywhere:
a store folder; else the dataset's store under ``$SPARSA_HOME/docstores`` (built on first use when the
corpus file is at least :data:`STORE_FROM_BYTES`); else, for small corpora, the corpus in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sparsa.artifacts import MANIFEST, atomic_dir, corpus_mismatch, read_manifest, write_manifest
from sparsa.errors import ConfigError, CorpusMismatchError, DataFormatError, IndexCorruptError
from sparsa.types import Document

logger = logging.getLogger(__name__)

KIND = "docstore"
DB = "docs.sqlite"
STORE_FROM_BYTES = 16 << 20  # a corpus file this large (~40k passages) is served from a store, not memory
_BATCH = 2000  # rows per insert
_FLUSH_WORDS = 1_000_000  # distinct words counted in memory before they are added to the table
_IN_CHUNK = 900  # ids per "IN (...)" query (below SQLite's oldest host-parameter limit, 999)
# The router's word tokens (``rag/routing.py``): document frequencies are counted over these.
WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")


def document_words(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text)}


def count_document_frequencies(texts: Iterable[str]) -> Counter[str]:
    df: Counter[str] = Counter()
    for text in texts:
        df.update(document_words(text))
    return df


@runtime_checkable
class DocumentSource(Protocol):
    """What turns hits into passages: ``sparsa.types.Corpus`` (memory) and :class:`DocStore` (disk)."""

    @property
    def identity(self) -> dict[str, Any]: ...

    def fetch(self, ids: Sequence[str]) -> list[Document | None]: ...

    def document_frequencies(self) -> Any: ...

    def __contains__(self, doc_id: object) -> bool: ...

    def __len__(self) -> int: ...


def check_source(source: DocumentSource, manifest: dict[str, Any], index: str | Path) -> None:
    """Refuse (``CorpusMismatchError``) documents of another corpus than the index ``manifest`` records."""
    reason = corpus_mismatch(manifest, source.identity)
    if reason is not None:
        reason = reason.replace("this server serves the", "the")
        raise CorpusMismatchError(f"index {Path(index).name}: {reason} "
                                  "given as the dataset (--dataset / retrieval.dataset)")


class DocStore:
    """A built store, read-only: one SQLite connection per thread (the service's handlers run in threads)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        self.manifest = read_manifest(self.folder, verify="size", kind=KIND)
        self.path = self.folder / DB
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # immutable: no locks or change checks (the file never changes once published)
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
            self._local.db = db
        return db

    @property
    def identity(self) -> dict[str, Any]:
        return self.manifest["corpus"]

    @property
    def name(self) -> str | None:
        return self.identity.get("name")

    def fetch(self, ids: Sequence[str]) -> list[Document | None]:
        """The documents of ``ids`` in that order; None for an id the store lacks."""
        ids = list(ids)
        found: dict[str, Document] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            rows = self._db().execute(f"SELECT id, text, title, meta FROM docs WHERE id IN "
                                      f"({','.join('?' * len(chunk))})", chunk)
            for doc_id, text, title, meta in rows:
                found[doc_id] = Document(doc_id, text, title, json.loads(meta) if meta else None)
        return [found.get(doc_id) for doc_id in ids]

    def __contains__(self, doc_id: object) -> bool:
        return self._db().execute("SELECT 1 FROM docs WHERE id = ?", (doc_id,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self.identity["documents"])

    def document_frequencies(self) -> StoredFrequencies:
        return StoredFrequencies(self)

    def __repr__(self) -> str:
        return f"DocStore({self.folder}, {len(self)} documents)"


class StoredFrequencies:
    """Word -> document frequency, read from the store per word (a question needs a few)."""

    def __init__(self, store: DocStore):
        self.store = store

    def get(self, word: str, default: int = 0) -> int:
        row = self.store._db().execute("SELECT df FROM df WHERE word = ?", (word,)).fetchone()
        return int(row[0]) if row else default


def _source_stat(corpus_path: Path) -> dict[str, Any]:
    stat = corpus_path.stat()
    return {"path": str(corpus_path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def build_docstore(corpus_path: str | Path, out: str | Path, name: str | None = None,
                   show_progress: bool | None = None) -> DocStore:
    """Build the store of a corpus JSONL file (``sparsa.data.iter_corpus``) at ``out``, atomically.
    ``name``: the corpus name recorded in its identity (default: the file's name)."""
    from sparsa.data.beir import iter_corpus
    from sparsa.progress import progress_bar

    corpus_path = Path(corpus_path).expanduser()
    name = name if name is not None else corpus_path.name
    with atomic_dir(out) as work:
        db = sqlite3.connect(work / DB)
        # A crash loses the whole build folder anyway: no journal, no syncs until the file is complete.
        db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
                         "CREATE TABLE docs (line INTEGER PRIMARY KEY, id TEXT NOT NULL, title TEXT NOT NULL,"
                         " text TEXT NOT NULL, meta TEXT);"
                         "CREATE TABLE df (word TEXT PRIMARY KEY, df INTEGER NOT NULL) WITHOUT ROWID;")
        df: Counter[str] = Counter()
        rows: list[tuple] = []
        with progress_bar(None, f"document store {name}", "doc", show_progress) as bar:
            for number, doc in iter_corpus(corpus_path):
                rows.append((number, doc.id, doc.title, doc.text, json.dumps(doc.meta) if doc.meta else None))
                df.update(document_words(doc.full_text))
                if len(rows) >= _BATCH:
                    db.executemany("INSERT INTO docs VALUES (?, ?, ?, ?, ?)", rows)
                    bar.update(len(rows))
                    rows = []
                if len(df) >= _FLUSH_WORDS:
                    _add_frequencies(db, df)
            db.executemany("INSERT INTO docs VALUES (?, ?, ?, ?, ?)", rows)
            bar.update(len(rows))
        _add_frequencies(db, df)
        _index_ids(db, corpus_path)
        identity = _identity(db, name, corpus_path)
        db.commit()
        db.close()
        write_manifest(work, KIND, {"name": name}, corpus=identity, source=_source_stat(corpus_path),
                       num_documents=identity["documents"])
    logger.info("document store %s: %d documents", out, identity["documents"])
    return DocStore(out)


def _add_frequencies(db: sqlite3.Connection, df: Counter[str]) -> None:
    db.executemany("INSERT INTO df VALUES (?, ?) ON CONFLICT (word) DO UPDATE SET df = df + excluded.df",
                   df.items())
    df.clear()


def _index_ids(db: sqlite3.Connection, corpus_path: Path) -> None:
    """The id index, built after the rows (faster than during inserts); a duplicate id names its lines."""
    try:
        db.execute("CREATE UNIQUE INDEX docs_id ON docs (id)")
    except sqlite3.IntegrityError:
        doc_id, first, line = db.execute("SELECT id, min(line), max(line) FROM docs GROUP BY id "
                                         "HAVING count(*) > 1 ORDER BY max(line) LIMIT 1").fetchone()
        raise DataFormatError(corpus_path, f"duplicate document id {doc_id!r} (first on line {first})",
                              line) from None


def _identity(db: sqlite3.Connection, name: str | None, corpus_path: Path) -> dict[str, Any]:
    """``corpus_identity`` streamed from the id index: SQLite's binary order of UTF-8 text is Python's
    code-point order, so the hash is the one an index build of the same corpus records."""
    digest, count = hashlib.sha256(), 0
    for (doc_id,) in db.execute("SELECT id FROM docs ORDER BY id"):
        digest.update((("\n" if count else "") + doc_id).encode("utf-8", "surrogatepass"))
        count += 1
    if not count:
        raise DataFormatError(corpus_path, "the corpus is empty")
    return {"name": name, "documents": count, "doc_ids_sha256": digest.hexdigest()}


def store_path(dataset: Path) -> Path:
    """Where the store of a dataset (folder or corpus file) lives: ``$SPARSA_HOME/docstores/<name>-<hash of
    its absolute path>``, so two datasets of one name do not share a store."""
    from sparsa.config import load_settings

    key = hashlib.sha256(str(dataset.resolve()).encode()).hexdigest()[:10]
    return load_settings().home / "docstores" / f"{dataset.name}-{key}"


def is_fresh(folder: Path, corpus_path: Path) -> bool:
    """Whether the store at ``folder`` was built from ``corpus_path`` as it is now (size and mtime)."""
    try:
        recorded = read_manifest(folder, verify="size", kind=KIND).get("source")
    except IndexCorruptError as exc:
        logger.warning("rebuilding the document store %s: %s", folder, exc)
        return False
    return recorded == _source_stat(corpus_path)


def open_documents(dataset: str | Path, store: bool | None = None,
                   show_progress: bool | None = None) -> Any:
    """The documents of ``--dataset`` (a dataset folder or name, a corpus file, or a store folder) as a
    :class:`DocumentSource`. A store folder is opened; else the dataset's store (:func:`store_path`) is
    opened, or built when missing or older than the corpus file and ``store`` is true (default: when the
    file has :data:`STORE_FROM_BYTES` or more); else the corpus is read into memory."""
    from sparsa.config import dataset_path
    from sparsa.data.beir import corpus_file, load_corpus

    path = dataset_path(dataset)
    if (path / MANIFEST).is_file():
        return DocStore(path)
    source = corpus_file(path)
    folder = store_path(path)
    if store is None:
        store = folder.exists() or source.stat().st_size >= STORE_FROM_BYTES
    if not store:
        return load_corpus(path)
    if not (folder.exists() and is_fresh(folder, source)):
        logger.info("building the document store of %s in %s (once per corpus)", path, folder)
        return build_docstore(source, folder, name=path.name, show_progress=show_progress)
    return DocStore(folder)


def require_documents(source: DocumentSource, ids: Sequence[str], error: type[Exception] = ConfigError,
                      what: str = "the corpus") -> list[Document]:
    """``source.fetch(ids)``, raising ``error`` naming the ids it lacks."""
    docs = source.fetch(ids)
    missing = [doc_id for doc_id, doc in zip(ids, docs, strict=True) if doc is None]
    if missing:
        raise error(f"{len(missing)} document id(s) not in {what}: {', '.join(map(repr, missing[:5]))}")
    return docs  # type: ignore[return-value]
