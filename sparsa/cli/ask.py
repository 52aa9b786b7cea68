"""``sparsa ask``: answer one question end to end (route -> retrieve -> rerank -> read).

    sparsa ask "who directed Kismet?" --index mixed-bm25 --dataset /tmp/rag/mixed --mode auto --stream

Calls :func:`sparsa.rag.load_pipeline` and ``QAPipeline.answer`` (``stream`` with ``--stream``);
prints the answer, citations, route and per-stage timings, or the ``Answer`` as JSON with ``--json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sparsa.cli.common import console, dataset_path, out
from sparsa.config import index_path
from sparsa.errors import ConfigError


def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    index: Annotated[str | None, typer.Option(help="index folder or name (omit for closed-book answers)")] = None,
    dataset: Annotated[str | None, typer.Option(help="dataset folder or corpus file the index was built from")] = None,
    mode: Annotated[str, typer.Option(help="auto (router decides), retrieve or recall")] = "auto",
    model: Annotated[str, typer.Option(help="reader LM: registry name or local folder")] = "smollm2-135m-instruct",
    k: Annotated[int, typer.Option(help="passages given to the reader", min=1, max=100)] = 5,
    rerank: Annotated[str | None, typer.Option(help="reranker: tildev2 or query-likelihood")] = None,
    rerank_model: Annotated[str | None, typer.Option(
        help="tildev2: passage store folder; query-likelihood: LM name or folder")] = None,
    router: Annotated[Path | None, typer.Option(help="router file (Router.save) for --mode auto")] = None,
    attention: Annotated[str, typer.Option(help="reader attention: full or sparse (long contexts)")] = "full",
    max_context_tokens: Annotated[int, typer.Option(help="token budget of all passages", min=16)] = 1024,
    max_new_tokens: Annotated[int, typer.Option(help="longest answer, in tokens", min=1, max=1024)] = 24,
    stream: Annotated[bool, typer.Option("--stream", help="print the answer as it is generated")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the answer as one JSON object")] = False,
) -> None:
    """Answer a question, citing passages of the index; prints the route taken and per-stage timings."""
    from sparsa.rag import Answer, load_pipeline
    from sparsa.rag.pipeline import MODES

    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    if not question.strip():
        raise ConfigError("the question is empty")
    if index is not None and dataset is None:
        raise ConfigError("--index needs --dataset: the corpus that turns its hits into passages")
    if index is None and mode == "retrieve":
        raise ConfigError("--mode retrieve needs --index and --dataset")
    if stream and as_json:
        raise ConfigError("choose one of --stream and --json")
    if router is not None and not router.is_file():
        raise ConfigError(f"router file not found: {router}")
    folder = index_path(index) if index is not None else None
    if folder is not None and not folder.exists():
        raise ConfigError(f"index not found: {folder}")
    pipeline = load_pipeline(folder, model=model, dataset=dataset_path(dataset) if dataset else None,
                             reranker=rerank, rerank_model=rerank_model, k=k, router=router,
                             attention=attention, max_context_tokens=max_context_tokens,
                             max_new_tokens=max_new_tokens)
    answer: Answer | None = None
    for piece in pipeline.stream(question, mode):
        if isinstance(piece, str):
            if stream:
                out.print(piece, end="")
        else:
            answer = piece
    if as_json:
        out.print_json(json.dumps(answer.to_dict()))
        return
    if stream:
        out.print()
    else:
        out.print(answer.text)
    console.print(f"route: {answer.route}")
    console.print(f"citations: {', '.join(answer.citations) or '(none)'}")
    for rank, hit in enumerate(answer.passages, 1):
        console.print(f"  [{rank}] {hit.doc_id} ({hit.score:.3f})")
    console.print("timings: " + ", ".join(f"{stage} {seconds * 1000:.0f} ms" for stage, seconds in answer.timings.items()))
