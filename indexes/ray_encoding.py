"""Encoding an indexing job's documents on a Ray cluster: Ray Data ``map_batches`` over encoder actors.

``RayEncoder`` stands in for a local encoder inside any index build (learned sparse or dense): it has
the same ``spec()`` (so the job fingerprint, the resumable shards and the manifest do not change).
A SPLADE build streams: ``stream_documents`` runs one Ray Data pipeline over every missing shard's texts
and yields CSR blocks in order (``sparsa/sparse_rows.py``), as the local encoder's stream does; a dense
build asks ``encode_documents`` shard by shard and each request takes the next vectors of one pipeline
over the rest of the job. Each actor rebuilds the encoder from its spec through the encoder registry and
runs its fast path (SPLADE: ``stream_documents``, CSR rows, no object per document); a call's result
travels as one packed byte string (one Arrow binary cell, no per-document objects in the object store).
With GPUs in the cluster there is one actor per GPU, otherwise one per node's worth of CPU. Shards are
still checkpointed by ``indexes/shards.py`` on the driver as they arrive, so a killed Ray job resumes
where it stopped, on Ray or locally. ``RayEncoder.stats`` says where the time went (actor start-up,
each actor's busy seconds, the driver's waits and its own shard work between batches); to read them after
``build_index_job``, make the encoder with ``jobs.job_encoder(..., ray=...)`` and pass it as ``encoder``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsa.errors import ConfigError, require
from sparsa.registry import build_encoder
from sparsa.sparse_rows import SparseRows

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RayOptions:
    """Where and how wide to run. ``address`` None: ``$SPARSA_RAY_ADDRESS``, else a local Ray instance."""

    address: str | None = None
    actors: int | None = None  # None: one per GPU, or one on a CPU-only cluster
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_actor: float = 1.0
    # Documents per actor call: a call refills the actor's tokenizer thread and GPU queue from empty,
    # so calls of a few hundred documents leave the GPU idle between them.
    batch_size: int = 4096

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"actors must be >= 1, got {self.actors}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


class _EncoderActor:
    """One model per actor, loaded once; a batch of texts in, one row out: the first position, the count,
    the vectors packed in one byte string (see :func:`_pack`), and the seconds the call took."""

    def __init__(self, spec: dict[str, Any], threads: int | None = None):
        import os

        self.encoder = build_encoder(spec, device="auto")
        self.threads, self.name = threads, f"{os.uname().nodename}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        texts = list(batch["text"])
        stream = getattr(self.encoder, "stream_documents", None)
        if stream is not None:  # SPLADE: the indexing path's CSR blocks
            vectors: Any = SparseRows.concat([r for _, r in stream(texts, threads=self.threads)])
        else:
            vectors = self.encoder.encode_documents(texts, show_progress=False)
        payload, seconds = _pack(vectors), time.perf_counter() - started
        dim = vectors.shape[1] if isinstance(vectors, np.ndarray) else -1  # -1: sparse rows
        return {"position": batch["position"][:1], "count": np.array([len(texts)]), "dim": np.array([dim]),
                "payload": np.array([payload], dtype=object), "seconds": np.array([seconds]),
                "actor": np.array([self.name], dtype=object)}


def _pack(vectors: Any) -> bytes:
    """Dense ``float32[n, d]`` as its bytes; sparse rows (``SparseRows`` or ``SparseVector``s) as
    ``int32 counts[n]``, ``int32 indices[nnz]``, ``float32 values[nnz]``."""
    if isinstance(vectors, np.ndarray):
        return np.ascontiguousarray(vectors, dtype=np.float32).tobytes()
    rows = vectors if isinstance(vectors, SparseRows) else SparseRows.from_vectors(vectors)
    counts = np.diff(rows.indptr).astype(np.int32)
    lo, hi = int(rows.indptr[0]), int(rows.indptr[-1])
    return b"".join((counts.tobytes(), rows.indices[lo:hi].astype(np.int32).tobytes(),
                     rows.values[lo:hi].astype(np.float32).tobytes()))


def _unpack(payload: bytes, count: int, dim: int | None) -> Any:
    """The inverse of :func:`_pack`: ``float32[count, dim]`` when ``dim`` is given, else ``SparseRows``."""
    flat = np.frombuffer(payload, dtype=np.int32)
    if dim is not None:
        return flat.view(np.float32).reshape(count, dim)
    counts = flat[:count]
    nnz = (len(flat) - count) // 2
    return SparseRows.from_counts(counts.astype(np.int64), flat[count : count + nnz],
                                  flat[count + nnz :].view(np.float32))


class RayEncoder:
    """A document encoder whose work runs on Ray; use it where an index build takes ``encoder=``.

    ``texts`` are all the job's document texts in corpus order: the first ``encode_documents`` request
    starts one pipeline from there to the end of the job, and each request (a shard) takes the next
    vectors. ``stream_documents`` (only where the local encoder has it) encodes exactly the texts given.
    """

    _OWN = ("local", "texts", "options", "stats", "_stream", "_pending")

    def __init__(self, encoder: Any, texts: Sequence[str], options: RayOptions | None = None):
        self.local, self.texts = encoder, list(texts)
        self.options = options or RayOptions()
        self.stats: dict[str, Any] = {}  # of the last pipeline: see _run
        self._stream: Iterator[tuple[int, Any]] | None = None
        self._pending: list[tuple[int, Any]] = []  # (offset, vectors) pulled but not yet handed out

    def spec(self) -> dict[str, Any]:
        return self.local.spec()

    @property
    def vocab_size(self) -> int:
        return self.local.vocab_size

    def __getattr__(self, name: str) -> Any:  # dim, config, ...: as the local encoder says
        if name in self._OWN:
            raise AttributeError(name)
        if name == "stream_documents":
            # Never the local encoder's own stream: the build would encode on the driver, not on Ray
            # (how every SPLADE "Ray" build ran once SpladeEncoder gained stream_documents).
            if not hasattr(self.local, "stream_documents"):
                raise AttributeError(name)
            return self._stream_documents
        return getattr(self.local, name)

    def _stream_documents(self, texts: Sequence[str], threads: int | None = None,
                          show_progress: bool | None = None) -> Iterator[tuple[int, SparseRows]]:
        """``(offset, rows)`` blocks of ``texts`` in order, encoded on Ray (``threads``: the driver's
        own tokenizer threads, unused here: each actor tokenises its own batches)."""
        return self._run(list(texts), 0, sparse_rows=True)

    def encode_documents(self, texts: Sequence[str], show_progress: bool | None = None) -> Any:
        start = self._locate(texts)
        if self._stream is None:
            self._stream = self._run(self.texts[start:], start)
        stop, parts = start + len(texts), []
        while not parts or parts[-1][0] + len(parts[-1][1]) < stop:
            offset, vectors = self._pending.pop(0) if self._pending else next(self._stream, (None, None))
            if offset is None or offset > start + sum(len(v) for _, v in parts):
                raise ConfigError("the Ray pipeline and the index build disagree on the document order")
            if offset + len(vectors) > start:
                parts.append((offset, vectors))
        last_offset, last = parts[-1]
        if last_offset + len(last) > stop:  # hand the rest to the next request
            self._pending.insert(0, (stop, last[stop - last_offset :]))
            parts[-1] = (last_offset, last[: stop - last_offset])
        first_offset, first = parts[0]
        parts[0] = (start, first[start - first_offset :])
        if stop == len(self.texts):  # the job is done: let Ray release the pipeline now
            self._stream.close()
            self._stream, self._pending = None, []
        if isinstance(first, np.ndarray):
            return np.concatenate([v for _, v in parts])
        return [vector for _, vectors in parts for vector in vectors]

    def _locate(self, texts: Sequence[str]) -> int:
        """Where ``texts`` start in the job: where the last request stopped, else found by a scan."""
        texts = list(texts)
        expected = self._pending[0][0] if self._pending else None
        if expected is not None and self.texts[expected : expected + len(texts)] == texts:
            return expected
        for start in (i for i, text in enumerate(self.texts) if texts and text == texts[0]):
            if self.texts[start : start + len(texts)] == texts:
                return start
        raise ConfigError("RayEncoder was asked to encode texts that are not part of its job")

    def _run(self, texts: list[str], offset: int, sparse_rows: bool = False) -> Iterator[tuple[int, Any]]:
        """``(offset, vectors)`` per actor call over ``texts`` (the job's documents from ``offset``), in
        order: ``float32[n, d]`` (dense), ``SparseRows`` (``sparse_rows``) or ``SparseVector`` lists."""
        import pyarrow as pa

        ray = _init_ray(self.options)
        options = self.options
        gpus = options.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        actors = options.actors or (int(ray.cluster_resources().get("GPU", 0)) if gpus else 1) or 1
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        # A CPU actor's torch threads: its share of the CPUs it holds; a GPU actor tokenises in one
        # thread (no tokenizer processes inside a Ray worker: sparsa.batching._fork_unsafe).
        threads = None if gpus else max(1, int(options.cpus_per_actor))
        # One input block per actor call: an actor pool takes work a block at a time and returns a block's
        # rows when the block is done, so one big block would keep every actor but one idle.
        size = options.batch_size
        positions = np.arange(offset, offset + len(texts), dtype=np.int64)
        blocks = [pa.table({"position": positions[a : a + size], "text": texts[a : a + size]})
                  for a in range(0, len(texts), size)]
        encoded = ray.data.from_arrow(blocks).map_batches(
            _EncoderActor, fn_constructor_kwargs={"spec": self.local.spec(), "threads": threads},
            batch_size=options.batch_size, compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus,
            num_cpus=options.cpus_per_actor, batch_format="numpy",
        )
        logger.info("encoding %d documents on Ray: %d actor(s), %s GPU each", len(texts), actors, gpus)
        stats = self.stats = {"documents": len(texts), "actors": actors, "gpus_per_actor": gpus,
                              "batch_size": options.batch_size, "calls": 0, "payload_bytes": 0,
                              "first_batch_s": None, "wait_s": 0.0, "driver_s": 0.0, "actor_busy_s": {},
                              "actor_documents": {}, "started": time.perf_counter(), "finished": None}
        clock = stats["started"]
        for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
            for position, count, dim, payload, seconds, actor in zip(
                    batch["position"], batch["count"], batch["dim"], batch["payload"], batch["seconds"],
                    batch["actor"], strict=True):
                now = time.perf_counter()
                if stats["first_batch_s"] is None:
                    stats["first_batch_s"] = now - clock
                else:
                    stats["wait_s"] += now - clock
                if position != offset:
                    raise ConfigError(f"Ray returned documents out of order at {offset}")
                count = int(count)
                vectors = _unpack(bytes(payload), count, int(dim) if dim >= 0 else None)
                if isinstance(vectors, SparseRows) and not sparse_rows:
                    vectors = vectors.vectors()
                stats["calls"] += 1
                stats["payload_bytes"] += len(payload)
                busy, docs = stats["actor_busy_s"], stats["actor_documents"]
                busy[str(actor)] = busy.get(str(actor), 0.0) + float(seconds)
                docs[str(actor)] = docs.get(str(actor), 0) + count
                yielded = stats["finished"] = time.perf_counter()  # the last batch's arrival, at the end
                yield offset, vectors
                clock = time.perf_counter()
                stats["driver_s"] += clock - yielded  # the build's own work between batches (shards)
                offset += count


def _init_ray(options: RayOptions) -> Any:
    import os

    ray = require("ray", "ray")
    require("ray.data", "ray")
    if not ray.is_initialized():
        address = options.address or os.environ.get("SPARSA_RAY_ADDRESS") or None
        try:
            with preserve_crash_signal_handlers():
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=False)
        except ConnectionError as exc:
            # Ray's own message names its --address flag and RAY_ADDRESS, which sparsa's users never set
            raise ConfigError(f"no Ray cluster at {address!r} ({exc}); pass --ray-address HOST:PORT or set "
                              "SPARSA_RAY_ADDRESS, or leave both out for a local Ray instance") from exc
    return ray


@contextmanager
def preserve_crash_signal_handlers() -> Iterator[None]:
    """Put back the process's native handlers for fault signals after ``ray.init`` or ``ray.shutdown``.

    The JVM behind Lucene raises SIGSEGV on purpose (null checks, safepoints) and must see it first;
    with Ray's crash reporter installed instead (or the default action, after ``ray.shutdown``),
    the next Lucene call after a Ray job kills the process. ``sigaction`` is called through ctypes
    because Python's ``signal`` cannot hold a native handler; the struct is copied as opaque bytes,
    so its layout does not matter.
    """
    import ctypes
    import ctypes.util
    import signal

    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    signals = [signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGTERM]
    saved = {}
    for number in signals:
        action = ctypes.create_string_buffer(512)  # larger than any libc's struct sigaction
        if libc.sigaction(int(number), None, action) == 0:
            saved[number] = action
    try:
        yield
    finally:
        for number, action in saved.items():
            libc.sigaction(int(number), action, None)
