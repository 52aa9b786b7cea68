"""One QA pipeline configuration: retrievers and fusion, reranker, router and reader, in one typed object.

The same object runs ``sparsa ask --config``, ``sparsa serve --config`` (``/qa`` then runs exactly
this chain) and :func:`sparsa.rag.pipeline.load_pipeline`. A file holds one table per stage::

    [retrieval]
    indexes = ["rtqa-splade"]       # names or folders; two or more are fused
    dataset = "/data/rtqa/corpus.jsonl"
    k = 50                          # passages the reader gets
    [rerank]
    name = "query-likelihood"
    depth = 100
    [router]
    mode = "retrieve"
    [reader]
    model = "qwen2.5-coder-1.5b-instruct"
    max_context_tokens = 16000
    [reader.attention]
    prefill = "block-sparse"
    decode = "sparse"
    kv = "duo"

or, instead of indexes, a knowledge graph to answer from (``kg/answer.py``)::

    [kg]
    path = "triples.tsv"            # head<TAB>relation<TAB>tail lines
    head = "models/amar-head"       # optional: Amar's soft prompts (its own LM reads)

Every key has a default, so a file names only what differs; an unknown key is an error naming the
file and the key. ``"auto"`` device, dtype and attention resolve when the reader loads: CUDA and bf16
when torch sees a GPU, else CPU and float32; full attention (on a GPU through our Triton decode kernel,
each step a CUDA graph), until the sparse variants win on a task's dev questions.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sparsa.errors import ConfigError
from sparsa.kernels import modes

DTYPES = ("auto", "float32", "bfloat16", "float16")
MODES = ("auto", "retrieve", "recall")


@dataclass(frozen=True, slots=True)
class AttentionConfig:
    """The reader's attention; the sparse settings are the kernels' (``kernels/hf_attention.py``).

    Defaults kept SmolLM2's long-context accuracy on dev needles (``longcontext_accuracy.json``): gate
    coverage 0.95, Quest over 1,024 tokens in pages of 64, retrieval heads exempt from both."""

    # "block-sparse": SeerAttention gate + block-sparse kernel from min_sparse_tokens on
    prefill: str = "dense"
    decode: str = "full"  # "sparse": Quest pages within budget_tokens per step
    kv: str = "full"  # "duo": non-retrieval heads keep sink + window tokens
    gate_coverage: float = 0.95
    min_sparse_tokens: int = modes.MIN_SPARSE_TOKENS
    dense_kernel: str = modes.DENSE_KERNEL  # dense prefill: "triton" (ours) or "sdpa" (torch picks)
    budget_tokens: int = 1024
    page_size: int = 64
    full_retrieval_heads: bool = True
    retrieval_fraction: float = 0.25
    sink: int = 64
    window: int = 256

    def __post_init__(self) -> None:
        for name, allowed in (("prefill", modes.PREFILL_MODES), ("decode", modes.DECODE_MODES),
                              ("kv", modes.KV_MODES), ("dense_kernel", modes.DENSE_KERNELS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"attention {name}={getattr(self, name)!r}: expected one of "
                                  f"{', '.join(allowed)}")
        if not 0.0 < self.gate_coverage <= 1.0:
            raise ConfigError(f"gate_coverage must be in (0, 1], got {self.gate_coverage}")

    @classmethod
    def preset(cls, name: str) -> AttentionConfig:
        """``full``; ``sparse`` (block-sparse prefill + sparse decode); ``sparse-kv`` (that
        + KV compression)."""
        if name not in ATTENTION_PRESETS:
            raise ConfigError(f"attention {name!r}: expected one of auto, {', '.join(ATTENTION_PRESETS)}")
        return ATTENTION_PRESETS[name]

    @property
    def is_full(self) -> bool:
        return (self.prefill, self.decode, self.kv) == ("dense", "full", "full")

    @property
    def name(self) -> str:
        """The preset this equals, else a description of the three modes."""
        named = [key for key, value in ATTENTION_PRESETS.items() if value == self]
        return named[0] if named else f"{self.prefill}/{self.decode}/{self.kv}"

    def kernel_settings(self) -> dict[str, Any]:
        """Keyword arguments of ``sparsa.kernels.hf_attention.use_sparse_attention``."""
        return dataclasses.asdict(self)


ATTENTION_PRESETS = {
    "full": AttentionConfig(),
    "sparse": AttentionConfig(prefill="block-sparse", decode="sparse"),
    "sparse-kv": AttentionConfig(prefill="block-sparse", decode="sparse", kv="duo"),
}


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    """The reader LM and its prompt budget. ``attention``: a preset name, ``"auto"`` or an
    :class:`AttentionConfig`; ``max_context_tokens``: all packed passages together."""

    model: str = "smollm2-135m-instruct"
    device: str = "auto"
    dtype: str = "auto"
    attention: AttentionConfig | str = "auto"
    max_context_tokens: int = 1024
    max_passage_tokens: int = 192
    max_new_tokens: int = 24

    def __post_init__(self) -> None:
        if isinstance(self.attention, str) and self.attention != "auto":
            object.__setattr__(self, "attention", AttentionConfig.preset(self.attention))
        elif isinstance(self.attention, dict):
            object.__setattr__(self, "attention",
                               _build(AttentionConfig, self.attention, "reader.attention."))
        if min(self.max_context_tokens, self.max_passage_tokens, self.max_new_tokens) < 1:
            raise ConfigError("token limits must be >= 1")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")

    def resolved(self) -> ReaderConfig:
        """``auto`` device, dtype and attention made concrete for this machine."""
        from sparsa.config import resolve_device

        device = resolve_device(self.device)
        on_gpu = device.startswith("cuda")
        dtype = ("bfloat16" if on_gpu else "float32") if self.dtype == "auto" else self.dtype
        # Full attention everywhere: on RealTime QA's 15 dev questions the sparse reader (Qwen2.5-1.5B) was
        # less accurate at k=50 and k=100 (0.53 vs 0.60, 0.47 vs 0.53), though with the fused gate its prefill
        # attention is faster from ~13k tokens (rag_longcontext_realtimeqa.json); on a GPU the reader still
        # runs full attention through our decode kernels (Reader.__init__).
        attention = AttentionConfig.preset("full") if self.attention == "auto" else self.attention
        return replace(self, device=device, dtype=dtype, attention=attention)


@dataclass(frozen=True, slots=True)
class RetrievalConfig:
    """``indexes``: names under ``$SPARSA_HOME/indexes`` or folders (none: closed-book only); two or
    more are fused (``fusion`` rrf or interpolate, optional ``weights``). ``dataset``: the corpus that
    turns hits into passages. ``depth``: hits fetched per question before reranking, fusion and the
    ``as_of`` date filter. ``event_encoder``: a head from ``sparsa train event``; the one dense index of a
    dated corpus is then searched with each question encoded as of ``as_of`` (today without one)."""

    indexes: tuple[str, ...] = ()
    dataset: str | None = None
    fusion: str = "rrf"
    weights: tuple[float, ...] | None = None
    k: int = 5
    depth: int = 100
    event_encoder: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "indexes", _strings(self.indexes, "retrieval.indexes"))
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if not 1 <= self.k <= 1000 or self.depth < 1:
            raise ConfigError("retrieval.k must be in 1..1000 and depth >= 1, got "
                              f"k={self.k}, depth={self.depth}")
        if self.indexes and self.dataset is None:
            raise ConfigError("retrieval.dataset is needed with indexes: the corpus that "
                              "turns hits into passages")
        if self.weights is not None and len(self.weights) != len(self.indexes):
            raise ConfigError(f"retrieval.weights has {len(self.weights)} values for "
                              f"{len(self.indexes)} indexes")
        if self.event_encoder is not None and len(self.indexes) != 1:
            raise ConfigError("retrieval.event_encoder encodes the queries of one dense index; got "
                              f"{len(self.indexes)} indexes")


@dataclass(frozen=True, slots=True)
class RerankConfig:
    """``name``: a ``RERANKERS`` name (none: no reranking); ``model``: tildev2's passage store or the
    query-likelihood LM; ``depth``: hits reranked (the reader gets the top ``retrieval.k``)."""

    name: str | None = None
    model: str | None = None
    depth: int = 20

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ConfigError(f"rerank.depth must be >= 1, got {self.depth}")


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """``path``: a router file (``Router.save``); ``mode``: auto (the router decides; without one, auto
    retrieves whenever there is an index), retrieve or recall."""

    path: str | None = None
    mode: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"router.mode {self.mode!r}: expected one of {', '.join(MODES)}")


@dataclass(frozen=True, slots=True)
class KGConfig:
    """Answer from a knowledge graph instead of passages (``kg/answer.py``). ``path``: a triples file
    (``head<TAB>relation<TAB>tail`` lines, ``.gz`` or plain; MetaQA's ``head|relation|tail`` too);
    ``head``: an Amar head (``sparsa train amar``), whose own LM then reads instead of ``reader.model``;
    ``mode``: amar (needs a head) or text (default: amar with a head, else text); ``max_paths`` /
    ``max_hops``: the relation paths retrieved."""

    path: str | None = None
    head: str | None = None
    mode: str | None = None
    max_paths: int = 6
    max_hops: int = 2

    def __post_init__(self) -> None:
        if self.mode not in (None, "amar", "text"):
            raise ConfigError(f"kg.mode {self.mode!r}: expected amar or text")
        if self.path is None and (self.head is not None or self.mode is not None):
            raise ConfigError("kg.head and kg.mode need kg.path (the triples file)")
        if self.max_paths < 1 or self.max_hops not in (1, 2):
            raise ConfigError(f"kg.max_paths must be >= 1 and kg.max_hops 1 or 2, got {self.max_paths}, "
                              f"{self.max_hops}")


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    kg: KGConfig = field(default_factory=KGConfig)

    def __post_init__(self) -> None:
        if self.kg.path is not None and (self.retrieval.indexes or self.router.path is not None):
            raise ConfigError("a [kg] chain answers from the graph: give no retrieval.indexes, reranker "
                              "or router")
        if self.rerank.name is not None and not self.retrieval.indexes:
            raise ConfigError("a reranker needs retrieval.indexes")
        if self.router.mode == "retrieve" and not self.retrieval.indexes:
            raise ConfigError("router.mode 'retrieve' needs retrieval.indexes")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> PipelineConfig:
        return _build(cls, data, "", source)

    @classmethod
    def from_file(cls, path: str | Path) -> PipelineConfig:
        """Read a TOML (or, with PyYAML installed, YAML) file; errors name the file (and line)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the pipeline config ({exc.strerror})") from None
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not YAML ({exc})") from None
        else:
            import tomllib

            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not TOML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected tables retrieval, rerank, router, reader, kg")
        return cls.from_dict(data, str(path))

    def override(self, values: dict[str, Any]) -> PipelineConfig:
        """A copy with ``{"stage.key": value}`` replaced (None values are skipped: flags not given)."""
        data = self.to_dict()
        for dotted, value in values.items():
            if value is None:
                continue
            *tables, key = dotted.split(".")
            target = data
            for table in tables:
                target = target.setdefault(table, {})
            target[key] = value
        return PipelineConfig.from_dict(data, "command line")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_toml(self) -> str:
        """The configuration as a TOML file (None values left out: they mean "not set")."""
        lines: list[str] = []

        def table(name: str, values: dict[str, Any]) -> None:
            lines.append(f"[{name}]")
            nested = {k: v for k, v in values.items() if isinstance(v, dict)}
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items()
                         if v is not None and k not in nested)
            lines.append("")
            for key, value in nested.items():
                table(f"{name}.{key}", value)

        for stage, values in self.to_dict().items():
            table(stage, values if isinstance(values, dict) else {"value": values})
        return "\n".join(lines)


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name}: expected a list of names or folders")
    return tuple(value)


NESTED = {(PipelineConfig, "retrieval"): RetrievalConfig, (PipelineConfig, "rerank"): RerankConfig,
          (PipelineConfig, "router"): RouterConfig, (PipelineConfig, "reader"): ReaderConfig,
          (PipelineConfig, "kg"): KGConfig,
          (ReaderConfig, "attention"): AttentionConfig}


def _build(cls: type, data: Any, prefix: str, source: str = "config") -> Any:
    """``cls(**data)`` with nested tables built too; unknown keys name the file and the closest key."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where} must be a table")
    known = [f.name for f in fields(cls)]
    values = {}
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(known)}"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
        nested = NESTED.get((cls, key))
        if nested is not None and isinstance(value, dict):
            value = _build(nested, value, f"{prefix}{key}.", source)
        values[key] = value
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{source}: {where}: {exc}") from None
