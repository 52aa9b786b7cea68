"""``sparsa serve``: the REST service and web page (uvicorn) on the embedded default.

Default: the SciFact BM25 and splade-tiny indexes that ``make demo`` builds, SciFact passages, and
SmolLM2 as the QA reader. Everything is loaded and checked before the port opens, so a damaged
index stops the server with ``error: <message>`` instead of serving wrong results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from sparsa.api.settings import ServiceLimits as Limits  # no FastAPI: the limit flags' defaults
from sparsa.cli.common import console, dataset_path
from sparsa.config import index_path
from sparsa.errors import ConfigError

DEFAULT_INDEXES = {"bm25": "scifact-bm25", "splade": "scifact-splade"}
LIMITS = "Service limits"  # the help panel of the operator's limits (api/settings.py: ServiceLimits)


def _limit(help_text: str) -> typer.models.OptionInfo:
    """A flag of the operator's limits: one ServiceLimits field, shown in its own help panel."""
    return typer.Option(help=help_text, rich_help_panel=LIMITS)


def curl_examples(base: str, key_header: str = "") -> str:
    """The example calls printed before serving (also what the README shows)."""
    return "\n".join([
        f"curl -s {base}/health",
        (f"curl -s {base}/search {key_header}-H 'Content-Type: application/json' "
         "-d '{\"query\": \"vitamin D deficiency and bone fractures\", \"retriever\": "
         "\"splade\", \"k\": 5}'"),
        (f"curl -s {base}/qa {key_header}-H 'Content-Type: application/json' "
         "-d '{\"question\": \"Does vitamin D deficiency increase fracture risk?\", \"mode\": \"auto\"}'"),
        f"curl -s {base}/metrics | head",
        f"open {base}/ (web page) and {base}/docs (OpenAPI)",
    ])


def _index_option(name: str | None, retriever: str) -> Path | None:
    if name is None or name == "none":
        return None
    path = index_path(name)
    if not path.exists():
        hint = "make demo" if name == DEFAULT_INDEXES.get(retriever) else "sparsa index"
        raise ConfigError(f"the {retriever} index {path} does not exist; build it first ({hint}), "
                          f"or pass --{retriever} none")
    return path


def _pipeline_config(path: Path | None, qa_model: str | None, qa_router: Path | None):
    """The --config chain with --qa-model / --qa-router applied; None without --config."""
    if path is None:
        return None
    from sparsa.rag.config import PipelineConfig

    chain = PipelineConfig.from_file(path)
    if not chain.retrieval.indexes and chain.kg.path is None:
        raise ConfigError(f"{path}: /qa needs retrieval.indexes (the indexes it reads from) or a [kg] table")
    overrides = {"reader.model": qa_model if qa_model not in (None, "none") else None,
                 "router.path": str(qa_router) if qa_router else None}
    return chain.override(overrides)


def _config_event_encoder(chain) -> Path | None:
    """A config's retrieval.event_encoder is the server's: /search with as_of and its /qa both use it."""
    return Path(chain.retrieval.event_encoder) if chain and chain.retrieval.event_encoder else None


def _served_indexes(chain) -> dict[str, Path]:
    """The chain's indexes keyed by their kind (bm25, splade, dense): one index per kind is served."""
    from sparsa.artifacts import read_manifest

    served: dict[str, Path] = {}
    for name in chain.retrieval.indexes:
        path = index_path(name)
        if not path.exists():
            raise ConfigError(f"the config's index {path} does not exist; build it first (sparsa index)")
        kind = read_manifest(path, verify="size")["kind"]
        if kind in served:
            raise ConfigError(f"the config names two {kind} indexes ({served[kind]}, "
                              f"{path}); serve one per kind")
        served[kind] = path
    return served


def serve(
    config: Annotated[Path | None, typer.Option(
        help="QA pipeline config (TOML/YAML): /qa runs that chain; its indexes, dataset and "
             "reranker are served (other index flags add to them)")] = None,
    bm25: Annotated[str | None, typer.Option(help="BM25 index (name or folder; 'none' to skip) "
                                             "[default without --config: "
                                             f"{DEFAULT_INDEXES['bm25']}]")] = None,
    splade: Annotated[str | None, typer.Option(help="learned-sparse index ('none' to skip) "
                                               "[default without --config: "
                                               f"{DEFAULT_INDEXES['splade']}]")] = None,
    dense: Annotated[str | None, typer.Option(help="dense index (name or folder)")] = None,
    dataset: Annotated[str | None, typer.Option(help="dataset whose corpus gives passage texts, or its "
                                                "document store (sparsa doc-store; built once for a large "
                                                "corpus) [default: the config's, else scifact]")] = None,
    reranker: Annotated[str | None,
                        typer.Option(help="reranker for rerank requests (e.g. query-likelihood)")] = None,
    reranker_model: Annotated[str | None, typer.Option(help="the reranker's model or store folder")] = None,
    qa_model: Annotated[str | None, typer.Option(
        help="QA reader model ('none' turns /qa off) [default: the config's, else "
             "smollm2-135m-instruct]")] = None,
    qa_router: Annotated[Path | None,
                         typer.Option(help="router file for QA mode auto (retrieve or recall)")] = None,
    event_encoder: Annotated[Path | None, typer.Option(
        help="event-aware query encoder (sparsa train event): /search on the dense index with as_of "
             "encodes the query as of that day (the dataset must be the dated corpus)")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="SPARSA_API_KEY",
                                                help="key for index management (and keyed search)")] = None,
    keyed_search: Annotated[bool, typer.Option(help="search, rerank and QA need the key too")] = False,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port", min=1, max=65535)] = 8000,
    timeout: Annotated[float, typer.Option(help="per-request time limit in seconds (work past it stops: "
                                                "504)")] = 30.0,
    verify: Annotated[str, typer.Option(help="index check at load: sha256 (full) or size")] = "sha256",
    splade_device: Annotated[str | None, typer.Option(
        help="where the splade index's exact backend searches and its queries are encoded: cpu, cuda:N, or "
             "several (cuda:0,cuda:1 or cuda:all: sharded, one shard per GPU, same hits) "
             "[default: SPARSA_DEVICE]")] = None,
    search_workers: Annotated[int, _limit("threads running /search")] = Limits.search_workers,
    search_queue: Annotated[int, _limit("/search requests waiting beyond those (more: 503)")] = (
        Limits.search_queue),
    rerank_workers: Annotated[int, _limit("threads reranking (/rerank, /search with rerank)")] = (
        Limits.rerank_workers),
    rerank_queue: Annotated[int, _limit("rerank requests waiting (more: 503)")] = Limits.rerank_queue,
    qa_workers: Annotated[int, _limit("threads answering /qa")] = Limits.qa_workers,
    qa_queue: Annotated[int, _limit("/qa requests waiting (more: 503)")] = Limits.qa_queue,
    max_k: Annotated[int, _limit("most hits a search may ask for (k; at most 1000)")] = Limits.max_k,
    max_rerank_depth: Annotated[int, _limit("most passages one request may rerank (rerank_depth, /rerank "
                                            "candidates; at most 100)")] = Limits.max_rerank_depth,
    max_new_tokens: Annotated[int, _limit("most tokens the QA reader generates per answer")] = (
        Limits.max_new_tokens),
    body_timeout: Annotated[float, _limit("seconds to receive a request body (then 408)")] = (
        Limits.body_timeout_s),
    keep_alive: Annotated[float, _limit("seconds an idle keep-alive connection stays open (keep it above "
                                        "your clients' idle expiry: httpx's is 5)")] = Limits.keep_alive_s,
    max_connections: Annotated[int, _limit("open connections or requests at once (more: 503)")] = (
        Limits.max_connections),
    # None, not Limits.build_threads: --help says "half the cores" rather than this machine's count
    build_threads: Annotated[int | None, _limit("CPU threads of an index build started through "
                                                "/indexes/build (default: half the cores)")] = None,
) -> None:
    """Serve search, rerank, QA, health, metrics and the web page over HTTP."""
    from sparsa.errors import require

    require("fastapi", "serve")
    uvicorn = require("uvicorn", "serve")
    from sparsa.api import ServiceConfig, ServiceState, create_app
    from sparsa.api.server import uvicorn_config

    limits = Limits(  # checked before anything loads
        search_workers=search_workers, search_queue=search_queue, rerank_workers=rerank_workers,
        rerank_queue=rerank_queue, qa_workers=qa_workers, qa_queue=qa_queue, max_k=max_k,
        max_rerank_depth=max_rerank_depth, max_new_tokens=max_new_tokens, body_timeout_s=body_timeout,
        keep_alive_s=keep_alive, max_connections=max_connections,
        **({"build_threads": build_threads} if build_threads is not None else {}))
    if splade_device is not None:  # a bad device spec fails here, before anything loads
        from sparsa.config import resolve_devices

        resolve_devices(splade_device)
    chain = _pipeline_config(config, qa_model, qa_router)
    flags = {"bm25": bm25, "splade": splade, "dense": dense}
    if chain is None:
        flags = {name: DEFAULT_INDEXES.get(name) if value is None else value for name, value in flags.items()}
    paths = {name: _index_option(value, name) for name, value in flags.items()}
    indexes = {**(_served_indexes(chain) if chain else {}),
               **{n: p for n, p in paths.items() if p is not None}}
    if chain is not None and chain.rerank.name:
        reranker, reranker_model = reranker or chain.rerank.name, reranker_model or chain.rerank.model
    qa_off = qa_model == "none"
    # SciFact is the demo's corpus: a config's own dataset, or none for a [kg] chain that serves no index
    # (its /qa reads the graph; loading SciFact would fail where it is not installed)
    dataset = dataset or (chain.retrieval.dataset if chain else None) or (
        "scifact" if chain is None or indexes else None)
    config = ServiceConfig(
        indexes=indexes, dataset=dataset_path(dataset) if dataset else None,
        reranker=reranker, reranker_model=reranker_model,
        qa_model=None if qa_off else (qa_model or (chain.reader.model if chain else "smollm2-135m-instruct")),
        qa_pipeline=None if qa_off else chain,
        qa_router=qa_router, event_encoder=event_encoder or _config_event_encoder(chain),
        api_key=api_key, open_search=not keyed_search, timeout_s=timeout, verify=verify,
        splade_device=splade_device, limits=limits,
    )
    console.print(f"loading {', '.join(config.indexes) or 'no indexes'}"
                  f"{', reranker ' + reranker if reranker else ''}"
                  f"{', QA reader ' + config.qa_model if config.qa_model else ''}…")
    state = ServiceState(config).load(strict=True)  # a damaged index ends here with its message
    base = f"http://{'localhost' if host in ('0.0.0.0', '127.0.0.1') else host}:{port}"
    key_header = f"-H 'X-API-Key: {'$SPARSA_API_KEY'}' " if keyed_search else ""
    console.print(f"serving on {base} (Ctrl-C stops). "
                  f"Try:\n{curl_examples(base, key_header)}", soft_wrap=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # api/server.py: JSON errors for what uvicorn answers itself, counted connections, the limits above
    try:
        uvicorn.Server(uvicorn_config(create_app(config, state), host, port, limits)).run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its clean shutdown (uvicorn.run swallows it)
        pass
