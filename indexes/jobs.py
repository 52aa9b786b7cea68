"""Index jobs: build any index kind, and open any index folder by its manifest.

``build_index`` builds a kind from a corpus with the encoder and settings it is given;
``build_index_job`` is the job behind ``sparsa index`` and the service's builds: it also chooses
each kind's encoder (registry name + default model: ``job_encoder``). ``open_index`` opens the index
itself (a BM25 index is a ``Retriever``; learned-sparse and dense indexes answer ``search_vectors``): to
search with query texts, open it with ``sparsa.search.open_retriever``.

Publishing and manifests are shared with every other artifact (``sparsa/artifacts.py``). Every
manifest written by a build here records the corpus it indexes (``corpus_identity``: its name when
known, and a hash of its document ids). ``build_index_job`` refuses to replace a published index
unless ``replace=True``; nothing replaces an index a live process serves (``atomic_dir``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsa.artifacts import MANIFEST, corpus_identity, read_manifest, recording_corpus
from sparsa.config import index_path
from sparsa.errors import ConfigError
from sparsa.registry import DENSE_BACKENDS, INDEX_BACKENDS, SPARSE_BACKENDS, build_encoder
from sparsa.types import Corpus

if TYPE_CHECKING:
    from sparsa.indexes.ray_encoding import RayOptions
    from sparsa.search import Retriever, VectorIndex

# Index kinds whose documents an encoder turns into vectors: the encoder's registry name and default model.
ENCODED_KINDS = {"splade": ("splade", "splade-tiny"), "dense": ("dense", "minilm-l6")}


def build_index(kind: str, corpus: Corpus, out: str | Path, show_progress: bool | None = None,
                corpus_name: str | None = None, **config: Any) -> Path:
    """Build an index of ``kind`` (see ``sparsa.registry.INDEX_BACKENDS``) over ``corpus`` at ``out`` (a path,
    or a bare name under ``$SPARSA_HOME/indexes``, where ``sparsa index --out`` and ``open_retriever`` look);
    its manifest records the corpus (``corpus_name``, e.g. the dataset folder's name, and its ids' hash)."""
    backend = INDEX_BACKENDS.get(kind)
    with recording_corpus(corpus_identity(corpus, corpus_name)):
        return backend.build(corpus, index_path(out), show_progress=show_progress, **config)


def build_index_job(
    kind: str, corpus: Corpus, out: str | Path, *, model: str | None = None,
    backends: Sequence[str] = ("exact",),
    structure: str = "flat", device: str = "auto", threads: int | None = None, ray: RayOptions | None = None,
    show_progress: bool | None = None, corpus_name: str | None = None, replace: bool = False,
    encoder_options: dict[str, Any] | None = None, encoder: Any | None = None,
) -> Path:
    """Build a ``kind`` index (bm25, splade or dense) over ``corpus`` at ``out`` as one atomic job.

    splade and dense indexes encode with ``model`` (default splade-tiny / minilm-l6) on ``device``, in
    checkpointed shards (a rerun resumes), on a Ray cluster with ``ray``; ``backends``: the splade
    search backends to build (the first is the default), ``structure``: the dense search structure.
    ``threads``: CPU threads of the build: SPLADE encoding (torch threads on a CPU, tokenizer processes
    feeding a GPU; None: all cores), Lucene indexing and the search threads of Seismic and Lucene-impact
    backends (None: 2).
    ``corpus_name``: recorded in the manifest with the hash of the corpus ids; ``replace``: an index
    already published at ``out`` is replaced (atomically, when the build succeeds) instead of refused.
    ``encoder_options``: more settings of the encoder's config (dense: ``pooling``, ``normalize``,
    ``query_prefix``, ``doc_prefix``), recorded in the manifest's encoder spec like the model.
    ``encoder``: the document encoder :func:`job_encoder` made, instead of ``model``, ``device``, ``ray`` and
    ``encoder_options`` (a caller that keeps it reads a ``RayEncoder``'s ``stats`` after the build).
    """
    INDEX_BACKENDS.target(kind)  # an unknown kind fails first, listing the known ones
    out = index_path(out)
    if encoder is not None and (kind not in ENCODED_KINDS or model is not None or device != "auto"
                                or ray is not None or encoder_options):
        raise ConfigError("build_index_job: an encoder replaces model, device, ray and encoder_options, and "
                          f"only {' and '.join(ENCODED_KINDS)} indexes take one")
    if not replace and (Path(out).expanduser() / MANIFEST).is_file():
        raise ConfigError(f"an index already exists at {out}; pass replace=True (sparsa index --replace) "
                          "to replace it once the new one is built")
    if kind not in ENCODED_KINDS:
        return build_index(kind, corpus, out, show_progress=show_progress, corpus_name=corpus_name,
                           threads=threads or 2)
    if kind == "dense":
        DENSE_BACKENDS.target(structure)  # unknown names fail before the model loads
        config: dict[str, Any] = {"structure": structure}
    else:
        for name in backends:
            SPARSE_BACKENDS.target(name)
        config = {"backends": tuple(backends), "threads": threads,
                  **{b: {"threads": threads or 2} for b in backends if b != "exact"}}
    if encoder is None:
        encoder = job_encoder(kind, corpus, model=model, device=device, ray=ray,
                              encoder_options=encoder_options)
    return build_index(kind, corpus, out, show_progress=show_progress, corpus_name=corpus_name,
                       encoder=encoder, **config)


def job_encoder(kind: str, corpus: Corpus, *, model: str | None = None, device: str = "auto",
                ray: RayOptions | None = None, encoder_options: dict[str, Any] | None = None) -> Any:
    """The document encoder :func:`build_index_job` encodes a splade or dense index of ``corpus`` with: the
    kind's encoder with ``model`` (default splade-tiny / minilm-l6) on ``device``, on a Ray cluster with
    ``ray`` (a ``RayEncoder``, whose ``stats`` say where the Ray pipeline's time went)."""
    if kind not in ENCODED_KINDS:
        raise ConfigError(f"{kind} indexes use no encoder; encoded kinds: {', '.join(ENCODED_KINDS)}")
    encoder_name, default_model = ENCODED_KINDS[kind]
    settings = {"model": model or default_model, "device": device, **(encoder_options or {})}
    encoder = build_encoder({"name": encoder_name, "config": settings})
    if ray is not None:
        from sparsa.indexes.ray_encoding import RayEncoder

        encoder = RayEncoder(encoder, [d.full_text for d in corpus.documents], ray)
    return encoder


def open_index(path: str | Path, verify: str = "size") -> Retriever | VectorIndex:
    """Open any sparsa index folder; its manifest says which backend reads it."""
    manifest = read_manifest(path, verify=verify)
    return INDEX_BACKENDS.get(manifest["kind"]).open(path)
