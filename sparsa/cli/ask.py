"""``sparsa ask``: answer one question end to end (route -> retrieve -> rerank -> read).

    sparsa ask "who directed Kismet?" --index mixed-bm25 --dataset /tmp/rag/mixed --mode auto --stream
    sparsa ask "Which country's prime minister resigned?" --config examples/realtimeqa.toml --as-of 2022-01-07
    sparsa ask --config examples/realtimeqa.toml --print-config
    sparsa ask "who directed [Big]" --kg triples.tsv              # from a knowledge graph (kg/answer.py)

The chain is one :class:`sparsa.rag.config.PipelineConfig`: ``--config FILE`` (TOML or YAML), then
each flag given overrides its key. ``--print-config`` prints the resolved chain (device, dtype and
attention made concrete for this machine) as TOML and exits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer

from sparsa.cli.common import console, out
from sparsa.errors import ConfigError

# Flag -> config key; a flag left out (None) keeps the config file's value or the default.
OVERRIDES = {
    "index": "retrieval.indexes", "dataset": "retrieval.dataset", "k": "retrieval.k",
    "event_encoder": "retrieval.event_encoder",
    "rerank": "rerank.name", "rerank_model": "rerank.model", "rerank_depth": "rerank.depth",
    "router": "router.path", "mode": "router.mode",
    "model": "reader.model", "device": "reader.device", "dtype": "reader.dtype",
    "attention": "reader.attention",
    "max_context_tokens": "reader.max_context_tokens", "max_passage_tokens": "reader.max_passage_tokens",
    "max_new_tokens": "reader.max_new_tokens", "kg": "kg.path", "kg_head": "kg.head",
}


def pipeline_config(config: Path | None, flags: dict) -> object:
    """The config file (or the defaults) with the given flags applied."""
    from sparsa.rag.config import PipelineConfig

    base = PipelineConfig.from_file(config) if config is not None else PipelineConfig()
    values = {key: flags[name] for name, key in OVERRIDES.items() if flags.get(name) is not None}
    if isinstance(values.get("retrieval.indexes"), str):
        values["retrieval.indexes"] = values["retrieval.indexes"].split(",")
    for key in ("router.path", "kg.path", "kg.head", "retrieval.event_encoder"):
        if key in values:
            values[key] = str(values[key])
    return base.override(values) if values else base


def ask(
    question: Annotated[str | None, typer.Argument(help="the question")] = None,
    config: Annotated[Path | None,
                      typer.Option(help="pipeline config file (TOML or YAML); flags override it")] = None,
    print_config: Annotated[bool,
                            typer.Option("--print-config", help="print the resolved chain and exit")] = False,
    index: Annotated[str | None, typer.Option(help="index folder or name; several comma-separated are fused "
                                              "(omit for closed-book answers)")] = None,
    dataset: Annotated[str | None,
                       typer.Option(help="dataset folder or corpus file the index was built from, or its "
                                    "document store (sparsa doc-store)")] = None,
    mode: Annotated[str | None, typer.Option(help="auto (router decides), retrieve or recall")] = None,
    as_of: Annotated[str | None,
                     typer.Option(help="only passages dated on or before this day (YYYY-MM-DD)")] = None,
    event_encoder: Annotated[Path | None, typer.Option(
        help="event-aware query encoder (sparsa train event) over a dense index of a dated corpus: the "
             "question is encoded as of --as-of (default today)")] = None,
    model: Annotated[str | None, typer.Option(help="reader LM: registry name or local folder")] = None,
    device: Annotated[str | None,
                      typer.Option(help="reader device: auto (CUDA when present), cpu, cuda")] = None,
    dtype: Annotated[str | None,
                     typer.Option(help="reader dtype: auto (bf16 on GPU), float32, bfloat16")] = None,
    k: Annotated[int | None, typer.Option(help="passages given to the reader", min=1, max=1000)] = None,
    rerank: Annotated[str | None, typer.Option(help="reranker: tildev2 or query-likelihood")] = None,
    rerank_model: Annotated[str | None, typer.Option(
        help="tildev2: passage store folder; query-likelihood: LM name or folder")] = None,
    rerank_depth: Annotated[int | None, typer.Option(help="hits reranked", min=1)] = None,
    router: Annotated[Path | None, typer.Option(help="router file (Router.save) for --mode auto")] = None,
    attention: Annotated[str | None, typer.Option(
        help="reader attention: auto (sparse on GPU), full, sparse or sparse-kv "
             "(with KV compression)")] = None,
    max_context_tokens: Annotated[int | None,
                                  typer.Option(help="token budget of all passages", min=16)] = None,
    max_passage_tokens: Annotated[int | None, typer.Option(help="tokens kept of each passage", min=8)] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="longest answer, in tokens",
                                                       min=1, max=1024)] = None,
    kg: Annotated[Path | None, typer.Option(
        help="answer from this knowledge graph instead of passages: head<TAB>relation<TAB>tail lines "
             "(.gz or plain; MetaQA's head|relation|tail too)")] = None,
    kg_head: Annotated[Path | None, typer.Option(
        help="with --kg: an Amar head (sparsa train amar); its own LM reads")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="print the answer as it is generated")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the answer as one JSON object")] = False,
) -> None:
    """Answer a question, citing passages of the index; prints the route taken and per-stage timings."""
    from sparsa.rag import Answer, load_pipeline

    flags = dict(locals())
    chain = pipeline_config(config, flags)
    if print_config:
        out.print(dataclasses.replace(chain, reader=chain.reader.resolved()).to_toml(), end="")
        return
    if question is None or not question.strip():
        raise ConfigError("the question is empty")
    if stream and as_json:
        raise ConfigError("choose one of --stream and --json")
    if router is not None and not router.is_file():
        raise ConfigError(f"router file not found: {router}")
    day = _date(as_of) if as_of else None
    pipeline = load_pipeline(chain)
    answer: Answer | None = None
    for piece in pipeline.stream(question, chain.router.mode, as_of=day):
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
    for item in answer.knowledge:  # route kg: * marks what the reader's prompt held
        gate = f" gate {item['gate']:.2f}" if "gate" in item else ""
        console.print(f" {'*' if item['shown'] else ' '} [{item['kind']}] {item['text']}{gate}")
    console.print("timings: " + ", ".join(f"{stage} {seconds * 1000:.0f} ms"
                                          for stage, seconds in answer.timings.items()))


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--as-of {value!r}: expected a date YYYY-MM-DD") from None
