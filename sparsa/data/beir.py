"""BEIR-layout datasets: ``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv``.

Also reads the TREC-style variants found in ``shared/data`` (``{"docid","doc"}`` corpora, TSV
topics, TREC qrels), so every benchmark folder loads through :func:`load_dataset`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sparsa.config import dataset_path
from sparsa.data.trec import json_error_text, numbered_lines, read_qrels
from sparsa.errors import DataFormatError
from sparsa.types import Corpus, Document, Qrels, Query

logger = logging.getLogger(__name__)

_ID_FIELDS = ("_id", "docid", "id")
_TEXT_FIELDS = ("text", "doc", "contents")


@dataclass(frozen=True, slots=True)
class Dataset:
    """A corpus with the queries and qrels of one split. ``queries`` keeps only judged queries."""

    name: str
    path: Path
    corpus: Corpus
    queries: list[Query]
    qrels: Qrels | None
    split: str


def json_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each line of a JSONL file (``.gz`` by suffix); a line that is not a
    JSON object raises :class:`DataFormatError` naming the file and line. Every dataset reader uses it."""
    for number, line in numbered_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, f"invalid JSON: {json_error_text(exc)}", number) from None
        if not isinstance(record, dict):
            raise DataFormatError(path, f"expected a JSON object, got {type(record).__name__}", number)
        yield number, record


def _field(record: dict, names: tuple[str, ...], path: Path, number: int, what: str) -> str:
    for name in names:
        if name in record:
            value = record[name]
            if not isinstance(value, str | int):
                raise DataFormatError(path, f"field {name!r} must be a string", number)
            return str(value)
    raise DataFormatError(path, f"missing {what} field (one of {', '.join(names)})", number)


def iter_corpus(path: str | Path) -> Iterator[tuple[int, Document]]:
    """``(line number, document)`` for each line of a corpus JSONL file, read as it streams (the document
    store builds from it without holding the corpus); duplicates are the caller's to find."""
    path = Path(path)
    for number, record in json_records(path):
        doc_id = _field(record, _ID_FIELDS, path, number, "id")
        text = _field(record, _TEXT_FIELDS, path, number, "text")
        title = record.get("title") or ""
        yield number, Document(doc_id, text, str(title), record.get("metadata") or None)


def read_corpus(path: str | Path, name: str | None = None) -> Corpus:
    path = Path(path)
    docs: dict[str, Document] = {}
    for number, doc in iter_corpus(path):
        if doc.id in docs:
            raise DataFormatError(path, f"duplicate document id {doc.id!r}", number)
        docs[doc.id] = doc
    if not docs:
        raise DataFormatError(path, "the corpus is empty")
    return Corpus(docs.values(), name=name)


EMPTY_QUERY = "the query text is empty"  # one message for a queries file, --query and a question


def _query(qid: str, text: str, path: Path, number: int) -> Query:
    if not text.strip():
        raise DataFormatError(path, f"{EMPTY_QUERY} (query {qid!r})", number)
    return Query(qid, text.strip())


def read_queries(path: str | Path) -> list[Query]:
    """``queries.jsonl`` (``_id``, ``text``) or a TSV of ``qid<TAB>text``; an empty text names its line.
    A labelled questions file (``sparsa train router``'s: ``question``, optional ``id``) reads too, each
    question under the id ``train router`` gives it (``id``, else ``q<line>``), so a run searched from it
    (``sparsa search --queries``) is keyed as ``train router --run`` looks it up."""
    path = Path(path)
    queries: list[Query] = []
    if ".tsv" in path.suffixes:
        for number, line in numbered_lines(path):
            qid, sep, text = line.partition("\t")
            if not sep:
                raise DataFormatError(path, "expected 'qid<TAB>text'", number)
            queries.append(_query(qid.strip(), text, path, number))
    else:
        for number, record in json_records(path):
            if "question" in record and not any(name in record for name in _TEXT_FIELDS):
                qid = _field(record, ("id",), path, number, "id") if "id" in record else f"q{number}"
                queries.append(_query(qid, _field(record, ("question",), path, number, "question"), path,
                                      number))
                continue
            queries.append(_query(_field(record, _ID_FIELDS, path, number, "id"),
                                  _field(record, _TEXT_FIELDS, path, number, "text"), path, number))
    if not queries:
        raise DataFormatError(path, "no queries in file")
    return queries


def _find(folder: Path, patterns: tuple[str, ...], what: str) -> Path:
    for pattern in patterns:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    raise DataFormatError(folder, f"no {what} file found (looked for {', '.join(patterns)})")


def check_qrels_against_corpus(qrels: Qrels, corpus: Corpus, qrels_path: Path) -> None:
    """A qrels line naming a document the corpus lacks is an error, reported with its line."""
    missing = {doc_id for docs in qrels.values() for doc_id in docs if doc_id not in corpus}
    if not missing:
        return
    for number, line in numbered_lines(qrels_path):
        parts = line.split()
        if parts and parts[-2] in missing:
            raise DataFormatError(qrels_path, f"document {parts[-2]!r} is not in the corpus", number)


_CORPUS_FILES = ("corpus.jsonl", "corpus.jsonl.gz", "*_document.jsonl.gz", "*.jsonl.gz")


def corpus_file(path: str | Path) -> Path:
    """The corpus JSONL file of a dataset folder, or the file itself."""
    path = Path(path).expanduser()
    return _find(path, _CORPUS_FILES, "corpus") if path.is_dir() else path


def load_corpus(path: str | Path) -> Corpus:
    """A corpus from a JSONL file or from the corpus file of a dataset folder; its name (for its identity,
    ``Corpus.identity``) is the folder's or file's name, as index builds record it."""
    return read_corpus(corpus_file(path), name=Path(path).name)


def qrels_file(folder: Path, split: str = "test") -> Path | None:
    """The judgements ``load_dataset`` reads for ``split``: ``qrels/<split>.tsv``, else a TREC-style
    ``*qrels*.txt`` in the folder (trec-dl-2019-passage), else None."""
    beir = folder / "qrels" / f"{split}.tsv"
    if beir.is_file():
        return beir
    trec_style = sorted(folder.glob("*qrels*.txt"))
    return trec_style[0] if trec_style else None


def load_dataset(path: str | Path, split: str = "test") -> Dataset:
    """Load a BEIR-layout folder (or a TREC-style one such as trec-dl-2019-passage), given as a path or,
    like the CLI's ``--dataset``, as a name under the data dir (``scifact``)."""
    folder = dataset_path(path)
    if not folder.is_dir():
        raise DataFormatError(folder, "a dataset is a folder (corpus, queries, qrels), not a file")
    corpus_path = _find(folder, _CORPUS_FILES, "corpus")
    queries_path = _find(folder, ("queries.jsonl", "*queries*.tsv", "topics*.tsv"), "queries")
    corpus = read_corpus(corpus_path)
    queries = read_queries(queries_path)

    qrels_path = qrels_file(folder, split)
    qrels = None
    if qrels_path is not None:
        qrels = read_qrels(qrels_path)
        check_qrels_against_corpus(qrels, corpus, qrels_path)
        queries = [q for q in queries if q.id in qrels]
        if not queries:
            raise DataFormatError(qrels_path, f"no query in {queries_path.name} has judgements in this file")
    logger.info("loaded %s: %d documents, %d queries (%s)", folder.name, len(corpus), len(queries), split)
    return Dataset(folder.name, folder, corpus, queries, qrels, split)
