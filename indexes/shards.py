"""Resumable sharded encoding, shared by every index that encodes documents (learned sparse, dense).

Each shard of documents is encoded, saved under a temporary name and renamed into place, so a
killed job never leaves a partial shard. ``job.json`` ties the shards to one fingerprint of
(documents, encoder spec, shard size, format): a rerun of the same job reuses finished shards,
a different job starts over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sparsa.progress import progress_bar
from sparsa.types import Corpus, Document

logger = logging.getLogger(__name__)

Part = TypeVar("Part")
Rows = Any  # sparsa.sparse_rows.SparseRows


def fingerprint(corpus: Corpus, encoder_spec: dict, shard_size: int, fmt: str = "",
                texts: list[str] | None = None) -> str:
    """``texts``: the documents' ``full_text``s, when the caller has them already."""
    payload = [encoder_spec, shard_size] if not fmt else [encoder_spec, shard_size, fmt]
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode())
    texts = texts if texts is not None else [doc.full_text for doc in corpus.documents]
    for doc, text in zip(corpus.documents, texts, strict=True):
        digest.update(doc.id.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()


def run_in_shards(
    corpus: Corpus, work: Path, encoder_spec: dict[str, Any], shard_size: int,
    encode: Callable[[list[Document]], Part], save: Callable[[Part, Path], None],
    load: Callable[[Path], Part], fmt: str = "", show_progress: bool | None = None,
) -> list[Part]:
    """``encode`` each shard of ``corpus`` into ``work/shards`` (reusing finished ones); parts in order."""
    shards = _start_job(corpus, work, encoder_spec, shard_size, fmt)
    docs = corpus.documents
    parts: list[Part] = []
    with progress_bar(total=len(docs), desc="encoding documents", unit="doc", show=show_progress) as bar:
        for number, start in enumerate(range(0, len(docs), shard_size)):
            batch = docs[start : start + shard_size]
            folder = shards / f"{number:06d}"
            if folder.is_dir():
                parts.append(load(folder))
            else:
                part = encode(batch)
                tmp = shards / f".{number:06d}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                save(part, tmp)
                tmp.rename(folder)
                parts.append(part)
            bar.update(len(batch))
    return parts


def _start_job(corpus: Corpus, work: Path, encoder_spec: dict[str, Any], shard_size: int, fmt: str,
               texts: list[str] | None = None) -> Path:
    """The shards folder of this job (emptied when the checkpoints there belong to another job)."""
    job = fingerprint(corpus, encoder_spec, shard_size, fmt, texts)
    job_file, shards = work / "job.json", work / "shards"
    if job_file.is_file() and json.loads(job_file.read_text()).get("fingerprint") != job:
        logger.info("the interrupted build was for other documents or another encoder: starting over")
        shutil.rmtree(shards, ignore_errors=True)
    shards.mkdir(exist_ok=True)
    job_file.write_text(json.dumps({"fingerprint": job, "encoder": encoder_spec}))
    return shards


def run_stream_in_shards(
    corpus: Corpus, work: Path, encoder_spec: dict[str, Any], shard_size: int,
    encode_stream: Callable[[list[str]], Iterator[tuple[int, Rows]]],
    make_part: Callable[[list[Document], Rows], Part], save: Callable[[Part, Path], None],
    load: Callable[[Path], Part], fmt: str = "", show_progress: bool | None = None,
) -> list[Part]:
    """As :func:`run_in_shards`, but the texts of every missing shard go through ``encode_stream`` as one
    stream (``texts -> (offset, rows)`` blocks in order, ``rows`` a ``SparseRows``), so the encoder's
    pipeline (tokenizer processes, GPU queue) never drains at a shard boundary. The loop here only
    hands each shard's blocks to a background thread, which joins them (``make_part``) and writes the
    shard while encoding goes on: the joins and writes are off the thread that feeds the encoder
    (0.3 s per 100k splade-tiny documents there before, index_harness_cpu.json)."""
    from sparsa.sparse_rows import SparseRows

    docs = corpus.documents
    full_texts = [d.full_text for d in docs]  # made once: the fingerprint hashes them, the stream reads them
    shards = _start_job(corpus, work, encoder_spec, shard_size, fmt, full_texts)
    starts = list(range(0, len(docs), shard_size))
    parts: list[Part | None] = [None] * len(starts)
    missing = []
    for number, start in enumerate(starts):
        folder = shards / f"{number:06d}"
        if folder.is_dir():
            parts[number] = load(folder)
        else:
            missing.append(number)

    def finish(number: int, blocks: list[Rows]) -> Part:
        """(writer thread) The shard's part, saved under a temporary name and renamed into place."""
        part = make_part(docs[starts[number] : starts[number] + shard_size], SparseRows.concat(blocks))
        tmp = shards / f".{number:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save(part, tmp)
        tmp.rename(shards / f"{number:06d}")
        return part

    texts = [t for number in missing for t in full_texts[starts[number] : starts[number] + shard_size]]
    with progress_bar(total=len(docs), desc="encoding documents", unit="doc", show=show_progress) as bar, \
            ThreadPoolExecutor(max_workers=1) as writer:
        bar.update(len(docs) - len(texts))
        written: deque = deque()  # (shard number, future), in order
        waiting, held, have = list(missing), [], 0
        blocks = encode_stream(texts)
        try:
            for _, rows in blocks:
                held.append(rows)
                have += len(rows)
                while waiting and have >= (size := min(shard_size, len(docs) - starts[waiting[0]])):
                    number = waiting.pop(0)
                    taken, held = _split_blocks(held, size)
                    have -= size
                    written.append((number, writer.submit(finish, number, taken)))
                    bar.update(size)
                while written and written[0][1].done():  # a failed write stops the job now
                    number, future = written.popleft()
                    parts[number] = future.result()
        finally:
            getattr(blocks, "close", lambda: None)()
        for number, future in written:
            parts[number] = future.result()
    if waiting:
        raise RuntimeError(f"the encoder returned too few rows: {len(waiting)} shards missing")
    return parts  # type: ignore[return-value]


def _split_blocks(held: list[Rows], n: int) -> tuple[list[Rows], list[Rows]]:
    """The first ``n`` rows of the blocks ``held`` (as blocks) and the rest; a block on the cut is sliced
    (views, no copy)."""
    count = 0
    for i, rows in enumerate(held):
        if count + len(rows) > n:
            cut = n - count
            return held[:i] + [rows.slice(0, cut)], [rows.slice(cut, len(rows))] + held[i + 1 :]
        count += len(rows)
        if count == n:
            return held[: i + 1], held[i + 1 :]
    return list(held), []


def clear_job(work: Path) -> None:
    """Drop a finished job's checkpoints (the index keeps its own copy of the vectors)."""
    shutil.rmtree(work / "shards", ignore_errors=True)
    (work / "job.json").unlink(missing_ok=True)
