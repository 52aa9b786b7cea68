"""Encoding an indexing job's documents on a Ray cluster: Ray Data ``map_batches`` over encoder actors.

``RayEncoder`` stands in for a local encoder inside any index build (learned sparse or dense): it has
the same ``spec()`` (so the job fingerprint, the resumable shards and the manifest do not change),
and its ``encode_documents`` returns each shard's vectors from one streaming Ray Data pipeline over
the rest of the corpus. Each actor rebuilds the encoder from its spec through the encoder registry;
with GPUs in the cluster there is one actor per GPU, otherwise one per node's worth of CPU.
Shards are still checkpointed by ``indexes/shards.py`` on the driver as they arrive, so a killed
Ray job resumes where it stopped, on Ray or locally.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsa.errors import ConfigError, require
from sparsa.registry import build_encoder
from sparsa.types import SparseVector

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RayOptions:
    """Where and how wide to run. ``address`` None: ``$SPARSA_RAY_ADDRESS``, else a local Ray instance."""

    address: str | None = None
    actors: int | None = None  # None: one per GPU, or one on a CPU-only cluster
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_actor: float = 1.0
    batch_size: int = 256  # documents per map_batches call

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"actors must be >= 1, got {self.actors}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


class _EncoderActor:
    """One model per actor, loaded once; a batch of texts in, its vectors out as columns."""

    def __init__(self, spec: dict[str, Any]):
        self.encoder = build_encoder(spec, device="auto")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.encoder.encode_documents(list(batch["text"]), show_progress=False)
        if isinstance(vectors, np.ndarray):  # dense encoders
            return {"position": batch["position"], "vector": vectors}
        indices = np.empty(len(vectors), dtype=object)
        values = np.empty(len(vectors), dtype=object)
        for i, vector in enumerate(vectors):
            indices[i], values[i] = vector.indices, vector.values
        return {"position": batch["position"], "indices": indices, "values": values}


class RayEncoder:
    """A document encoder whose work runs on Ray; use it where an index build takes ``encoder=``.

    ``texts`` are all the job's document texts in corpus order: the first request starts one
    pipeline from there to the end of the job, and each request (a shard) takes the next vectors.
    """

    def __init__(self, encoder: Any, texts: Sequence[str], options: RayOptions | None = None):
        self.local, self.texts = encoder, list(texts)
        self.options = options or RayOptions()
        self._stream: Iterator[tuple[int, Any]] | None = None
        self._pending: list[tuple[int, Any]] = []  # (offset, vectors) pulled but not yet handed out

    def spec(self) -> dict[str, Any]:
        return self.local.spec()

    @property
    def vocab_size(self) -> int:
        return self.local.vocab_size

    def __getattr__(self, name: str) -> Any:  # dim, config, ...: as the local encoder says
        if name in ("local", "texts", "options", "_stream", "_pending"):
            raise AttributeError(name)
        return getattr(self.local, name)

    def encode_documents(self, texts: Sequence[str], show_progress: bool | None = None) -> Any:
        start = self._locate(texts)
        if self._stream is None:
            self._stream = self._run(start)
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
        """Where ``texts`` start in the job."""
        expected = self._pending[0][0] if self._pending else None
        candidates = [expected] if expected is not None else []
        candidates += [i for i, text in enumerate(self.texts) if texts and text == texts[0]]
        for start in candidates:
            if self.texts[start : start + len(texts)] == list(texts):
                return start
        raise ConfigError("RayEncoder was asked to encode texts that are not part of its job")

    def _run(self, start: int) -> Iterator[tuple[int, Any]]:
        """``(offset, vectors)`` batches from ``start`` to the end of the job, in order."""
        ray = _init_ray(self.options)
        options = self.options
        gpus = options.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        actors = options.actors or (int(ray.cluster_resources().get("GPU", 0)) if gpus else 1) or 1
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        items = [{"position": i, "text": self.texts[i]} for i in range(start, len(self.texts))]
        encoded = ray.data.from_items(items).map_batches(
            _EncoderActor, fn_constructor_kwargs={"spec": self.local.spec()}, batch_size=options.batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus, num_cpus=options.cpus_per_actor,
            batch_format="numpy",
        )
        logger.info("encoding %d documents on Ray: %d actor(s), %s GPU each", len(items), actors, gpus)
        offset = start
        for batch in encoded.iter_batches(batch_size=options.batch_size, batch_format="numpy"):
            positions = batch["position"]
            if positions[0] != offset or positions[-1] != offset + len(positions) - 1:
                raise ConfigError(f"Ray returned documents out of order at {offset}")
            if "vector" in batch:
                vectors: Any = np.asarray(batch["vector"], dtype=np.float32)
            else:
                vectors = [SparseVector(np.asarray(i, np.int32), np.asarray(v, np.float32))
                           for i, v in zip(batch["indices"], batch["values"], strict=True)]
            yield offset, vectors
            offset += len(positions)


def _init_ray(options: RayOptions) -> Any:
    import os

    ray = require("ray", "ray")
    require("ray.data", "ray")
    if not ray.is_initialized():
        address = options.address or os.environ.get("SPARSA_RAY_ADDRESS") or None
        with preserve_crash_signal_handlers():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False)
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
