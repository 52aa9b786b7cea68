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

from sparsa.cli.common import console, dataset_path
from sparsa.config import index_path
from sparsa.errors import ConfigError

DEFAULT_INDEXES = {"bm25": "scifact-bm25", "splade": "scifact-splade"}


def curl_examples(base: str, key_header: str = "") -> str:
    """The example calls printed before serving (also what the README shows)."""
    return "\n".join([
        f"curl -s {base}/health",
        (f"curl -s {base}/search {key_header}-H 'Content-Type: application/json' "
         "-d '{\"query\": \"vitamin D deficiency and bone fractures\", \"retriever\": \"splade\", \"k\": 5}'"),
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


def serve(
    bm25: Annotated[str | None, typer.Option(help="BM25 index (name or folder; 'none' to skip)")] = DEFAULT_INDEXES["bm25"],
    splade: Annotated[str | None, typer.Option(help="learned-sparse index ('none' to skip)")] = DEFAULT_INDEXES["splade"],
    dense: Annotated[str | None, typer.Option(help="dense index (name or folder)")] = None,
    dataset: Annotated[str, typer.Option(help="dataset whose corpus gives passage texts")] = "scifact",
    reranker: Annotated[str | None, typer.Option(help="reranker for rerank requests (e.g. query-likelihood)")] = None,
    reranker_model: Annotated[str | None, typer.Option(help="the reranker's model or store folder")] = None,
    qa_model: Annotated[str, typer.Option(help="QA reader model ('none' turns /qa off)")] = "smollm2-135m-instruct",
    qa_router: Annotated[Path | None, typer.Option(help="router file for QA mode auto (retrieve or recall)")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="SPARSA_API_KEY",
                                                help="key for index management (and keyed search)")] = None,
    keyed_search: Annotated[bool, typer.Option(help="search, rerank and QA need the key too")] = False,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port", min=1, max=65535)] = 8000,
    timeout: Annotated[float, typer.Option(help="per-request time limit in seconds")] = 30.0,
    verify: Annotated[str, typer.Option(help="index check at load: sha256 (full) or size")] = "sha256",
) -> None:
    """Serve search, rerank, QA, health, metrics and the web page over HTTP."""
    from sparsa.errors import require

    require("fastapi", "serve")
    uvicorn = require("uvicorn", "serve")
    from sparsa.api import ServiceConfig, ServiceState, create_app

    paths = {name: _index_option(value, name) for name, value in (("bm25", bm25), ("splade", splade), ("dense", dense))}
    config = ServiceConfig(
        indexes={name: path for name, path in paths.items() if path is not None},
        dataset=dataset_path(dataset), reranker=reranker, reranker_model=reranker_model,
        qa_model=None if qa_model == "none" else qa_model, qa_router=qa_router, api_key=api_key, open_search=not keyed_search,
        timeout_s=timeout, verify=verify,
    )
    console.print(f"loading {', '.join(config.indexes) or 'no indexes'}"
                  f"{', reranker ' + reranker if reranker else ''}{', QA reader ' + qa_model if config.qa_model else ''}…")
    state = ServiceState(config).load(strict=True)  # a damaged index ends here with its message
    base = f"http://{'localhost' if host in ('0.0.0.0', '127.0.0.1') else host}:{port}"
    key_header = f"-H 'X-API-Key: {'$SPARSA_API_KEY'}' " if keyed_search else ""
    console.print(f"serving on {base} (Ctrl-C stops). Try:\n{curl_examples(base, key_header)}", soft_wrap=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(create_app(config, state), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
