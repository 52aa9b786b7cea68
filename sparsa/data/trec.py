"""TREC run files (``qid Q0 docid rank score tag``) and qrels (BEIR TSV or TREC four-column); line-file I/O
shared by every reader and writer of records (numbered lines for errors, atomic writes, JSONL)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from sparsa.errors import DataFormatError
from sparsa.types import Hit, Qrels, Run


def numbered_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with 1-based line numbers; gzip by suffix; bad UTF-8 names the line."""
    import gzip

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise DataFormatError(path, f"not valid UTF-8 ({exc.reason})", number) from None
            if line.strip():
                yield number, line


def json_error_text(exc: json.JSONDecodeError) -> str:
    """``Expecting value at column 3``; messages such as "Unterminated string starting at"
    end in "at" already."""
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


@contextmanager
def atomic_text(path: str | Path) -> Iterator[TextIO]:
    """A UTF-8 text file (gzip by a ``.gz`` suffix) written to a temporary sibling and renamed into place when
    the block ends without an error, so a reader never sees half a file; after an error the old file stays."""
    import gzip

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with (gzip.open(tmp, "wt", encoding="utf-8") if path.suffix == ".gz"
              else open(tmp, "w", encoding="utf-8")) as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_jsonl(rows: Iterable[dict], path: str | Path) -> None:
    """One JSON object per line, atomically (gzip by suffix); read back with :func:`numbered_lines`."""
    with atomic_text(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_run(path: str | Path, name: str | None = None) -> Run:
    results: dict[str, list[Hit]] = {}
    tag = None
    for number, line in numbered_lines(path):
        parts = line.split()
        if len(parts) != 6:
            raise DataFormatError(path, f"expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}",
                                  number)
        qid, _, doc_id, _, score, tag = parts
        try:
            results.setdefault(qid, []).append(Hit(doc_id, float(score)))
        except ValueError:
            raise DataFormatError(path, f"score {score!r} is not a number", number) from None
    return Run(results, name=name or tag or Path(path).stem)


def write_run(run: Run, path: str | Path) -> None:
    """Write atomically, so a reader never sees half a run."""
    tag = run.name.replace(" ", "_") or "sparsa"
    with atomic_text(path) as f:
        for qid, hits in run.items():
            for rank, hit in enumerate(hits, start=1):
                f.write(f"{qid} Q0 {hit.doc_id} {rank} {hit.score:.6f} {tag}\n")


def read_qrels(path: str | Path) -> Qrels:
    """BEIR ``query-id<TAB>corpus-id<TAB>score`` (with header) or TREC ``qid iter docid grade``."""
    judgements: dict[str, dict[str, int]] = {}
    for number, line in numbered_lines(path):
        parts = line.split()
        if number == 1 and parts[:2] == ["query-id", "corpus-id"]:
            continue
        if len(parts) == 3:
            qid, doc_id, grade = parts
        elif len(parts) == 4:
            qid, _, doc_id, grade = parts
        else:
            raise DataFormatError(
                path, f"expected 'qid docid grade' or 'qid iter docid grade', got {len(parts)} columns",
                number
            )
        try:
            judgements.setdefault(qid, {})[doc_id] = int(float(grade))
        except ValueError:
            raise DataFormatError(path, f"grade {grade!r} is not a number", number) from None
    if not judgements:
        raise DataFormatError(path, "no judgements in file")
    return Qrels(judgements)


def write_qrels(qrels: Qrels, path: str | Path) -> None:
    with atomic_text(path) as f:
        for qid, docs in qrels.items():
            for doc_id, grade in docs.items():
                f.write(f"{qid} 0 {doc_id} {grade}\n")
