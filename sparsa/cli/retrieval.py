"""``sparsa index``, ``sparsa search`` and ``sparsa eval``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sparsa.cli.common import console, dataset_path, out
from sparsa.config import index_path
from sparsa.data import load_corpus, load_dataset, read_queries
from sparsa.data.beir import EMPTY_QUERY
from sparsa.errors import ConfigError
from sparsa.eval import DEFAULT_MEASURES, RankingEval, evaluate_run
from sparsa.retrieval.dated import read_query_days
from sparsa.search import open_retriever
from sparsa.types import Qrels, Query, Run

DatasetOpt = Annotated[str | None,
                       typer.Option(help="dataset folder or name under the data dir (e.g. scifact)")]
SplitOpt = Annotated[str, typer.Option(help="qrels split of the dataset")]


def index(
    out_: Annotated[str, typer.Option("--out", help="index folder, or a name under $SPARSA_HOME/indexes")],
    dataset: DatasetOpt = None,
    corpus: Annotated[Path | None, typer.Option(help="corpus JSONL file (instead of --dataset)")] = None,
    kind: Annotated[str,
                    typer.Option(help="bm25 (Lucene), splade (learned sparse) "
                                      "or dense (bi-encoder)")] = "bm25",
    model: Annotated[str | None, typer.Option(help="splade/dense: encoder model (name, folder or hub id); "
                                              "default splade-tiny / minilm-l6")] = None,
    backend: Annotated[list[str] | None, typer.Option(help="splade: exact, seismic, lucene-impact")] = None,
    faiss: Annotated[str, typer.Option(help="dense: search structure flat, hnsw or ivfpq")] = "flat",
    device: Annotated[str, typer.Option(help="splade/dense: encoding device (auto, cpu, cuda)")] = "auto",
    max_tokens: Annotated[int | None, typer.Option(
        min=512, help="splade/dense: padded tokens per encoding batch (default on a GPU 131,072; lower it if "
                      "the GPU runs out of memory, e.g. with a large model)")] = None,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads of the build (splade: torch threads on a CPU, tokenizer processes feeding a GPU; "
             "default all cores; bm25 and search backends: default 2)")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="splade/dense: encode on a Ray cluster")] = False,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default $SPARSA_RAY_ADDRESS, "
                                                    "else a local Ray instance)")] = None,
    ray_actors: Annotated[int | None, typer.Option(help="encoder actors (default: one per GPU)")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="replace an existing index at --out")] = False,
    pooling: Annotated[str | None, typer.Option(help="dense: mean, cls or max (default: as the model's "
                                                     "sentence-transformers files say)")] = None,
    normalize: Annotated[bool | None, typer.Option("--normalize/--no-normalize", help="dense: L2-normalise "
                                                   "the vectors (default: as the model's files say)")] = None,
    query_prefix: Annotated[str | None, typer.Option(help="dense: text before every query (e5: 'query: ')")]
    = None,
    doc_prefix: Annotated[str | None, typer.Option(help="dense: text before every document (e5: "
                                                        "'passage: ')")] = None,
) -> None:
    """Build an index over a corpus as one atomic job (a failed build leaves the old index intact).

    splade and dense indexes encode in checkpointed shards: rerunning an interrupted job resumes it,
    with or without --ray.
    """
    from sparsa.indexes import build_index_job
    from sparsa.indexes.jobs import ENCODED_KINDS
    from sparsa.indexes.ray_encoding import RayOptions
    from sparsa.registry import INDEX_BACKENDS

    if (dataset is None) == (corpus is None):
        raise ConfigError("give exactly one of --dataset or --corpus")
    INDEX_BACKENDS.target(kind)  # an unknown kind fails before the corpus loads
    options = dense_options(kind, model, pooling, normalize, query_prefix, doc_prefix)
    if max_tokens is not None:
        if kind not in ENCODED_KINDS:
            raise ConfigError(f"--max-tokens sets an encoder's batches: splade and dense indexes, not {kind}")
        options["max_tokens"] = max_tokens
    folder = dataset_path(dataset) if dataset is not None else None
    docs = load_corpus(corpus if corpus is not None else folder)
    path = build_index_job(kind, docs, out_, model=model, backends=tuple(backend or ("exact",)),
                           structure=faiss, device=device, threads=threads,
                           ray=RayOptions(address=ray_address, actors=ray_actors) if ray else None,
                           corpus_name=folder.name if folder is not None else None,
                           replace=replace, encoder_options=options)
    console.print(f"indexed {len(docs)} documents ({kind}) into {path}")


def dense_options(kind: str, model: str | None, pooling: str | None, normalize: bool | None,
                  query_prefix: str | None, doc_prefix: str | None) -> dict:
    """The dense encoder settings given as flags; a model without sentence-transformers files (a hub id
    or a bare transformers folder) must be given its pooling and normalisation: nothing is guessed."""
    options = {key: value for key, value in (("pooling", pooling), ("normalize", normalize),
                                             ("query_prefix", query_prefix), ("doc_prefix", doc_prefix))
               if value is not None}
    if kind != "dense":
        if options:
            flag = next(iter(options)).replace("_", "-")
            raise ConfigError(f"--{flag} is a dense index setting, not {kind}'s")
        return options
    from sparsa.models import resolve_model
    from sparsa.retrieval.dense import declares_settings

    name = model or "minilm-l6"
    if not declares_settings(resolve_model(name)) and (pooling in (None, "auto") or normalize is None):
        raise ConfigError(f"{name} has no sentence-transformers files (modules.json), so its pooling and "
                          "normalisation are unknown: give --pooling mean|cls|max and --normalize or "
                          "--no-normalize")
    return options


def search(
    index_: Annotated[str, typer.Option("--index", help="index folder or name")],
    query: Annotated[str | None, typer.Option(help="one query text; prints the hits")] = None,
    dataset: DatasetOpt = None,
    split: SplitOpt = "test",
    queries: Annotated[Path | None, typer.Option(
        help="queries file (JSONL or TSV), or a labelled questions file (train router's: question, "
             "optional id; ids as train router gives them, for its --run)")] = None,
    k: Annotated[int, typer.Option(help="hits per query", min=1, max=10_000)] = 1000,
    backend: Annotated[str | None,
                       typer.Option(help="splade index: search backend (default: the index's first)")] = None,
    run_out: Annotated[Path | None, typer.Option("--out", help="write the run here (TREC format)")] = None,
    as_of: Annotated[str | None, typer.Option(
        help="only documents dated on or before this day (YYYY-MM-DD, the corpus's metadata.date); "
             "queries with their own date in the queries file are searched as of that day")] = None,
    event_encoder: Annotated[Path | None, typer.Option(
        help="dense index: encode queries with this event-aware head (sparsa train event) as of their "
             "day")] = None,
    corpus: Annotated[str | None, typer.Option(
        help="the dated corpus (JSONL or dataset) for --as-of, --window-days and --event-encoder "
             "[default: the --dataset's]")] = None,
    window_days: Annotated[int | None, typer.Option(
        min=0, help="only documents dated within this many days before each query's day (or --as-of), "
                    "that day included; undated documents drop out")] = None,
    depth: Annotated[int, typer.Option(
        min=1, help="with dates: hits fetched per query before the date filter")] = 1000,
    pool: Annotated[Path | None, typer.Option(
        help="qrels file: rank only each judged query's judged documents (the whole index is scored; "
             "judged documents not retrieved come last, in doc-id order)")] = None,
    k1: Annotated[float | None, typer.Option(help="bm25 index: k1 (default: as built, 0.9)")] = None,
    b: Annotated[float | None, typer.Option(help="bm25 index: b (default: as built, 0.4)")] = None,
    device: Annotated[str | None, typer.Option(
        help="where queries are encoded and a splade index's exact backend searches: cpu, cuda, cuda:N, "
             "or several (cuda:0,cuda:1 or cuda:all: the index sharded, one shard per GPU, same hits) "
             "[default: SPARSA_DEVICE, else auto]")] = None,
) -> None:
    """Search an index with one query, a dataset's queries, or a queries file."""
    if sum(x is not None for x in (query, dataset, queries)) != 1:
        raise ConfigError("give exactly one of --query, --dataset or --queries")
    if query is not None and not query.strip():
        raise ConfigError(f"--query: {EMPTY_QUERY}")
    if pool is not None and query is not None:
        raise ConfigError("--pool ranks the judged documents of --dataset or --queries, not one --query")
    day = parse_day(as_of, "--as-of") if as_of else None
    source = dataset_path(dataset) if dataset else queries
    dated = day is not None or event_encoder is not None or window_days is not None
    days = read_query_days(source) if source is not None and dated else {}
    docs = None
    if dated:
        if corpus is None and dataset is None:
            raise ConfigError("--as-of, --window-days and --event-encoder read document dates: give "
                              "--corpus (a dated corpus)")
        docs = load_corpus(dataset_path(corpus or dataset))
    if event_encoder is not None:
        from sparsa.retrieval.dated import EventAwareRetriever

        if k1 is not None or b is not None:
            raise ConfigError("--k1 and --b are BM25 parameters; --event-encoder searches a dense index")
        retriever = EventAwareRetriever.open(index_, event_encoder, docs, device=device)
    else:
        retriever = open_retriever(index_, backend, k1=k1, b=b, device=device)
    judged = Qrels.read_trec(pool) if pool is not None else None
    if judged is not None:  # every document takes part, so no judged one is cut by the depth
        from sparsa.artifacts import read_manifest

        k = depth = max(int(read_manifest(index_path(index_), verify="none")["num_documents"]), 1)
    if query is not None:
        topics = [Query("q", query)]
    else:
        topics = load_dataset(dataset_path(dataset), split).queries if dataset else read_queries(queries)
    if dated:  # each query as of its own day, else --as-of, else today
        from sparsa.retrieval.dated import search_run_as_of

        when = {q.id: days.get(q.id, day or dt.date.today()) for q in topics}
        run = search_run_as_of(retriever, topics, k, when, docs, depth=depth,
                               show_progress=False if query else None, window_days=window_days)
    else:
        run = retriever.search(topics, k=k, show_progress=False if query else None)
    if judged is not None:
        from sparsa.eval.pool import judged_pool_run

        run = judged_pool_run(run, Qrels({q.id: judged[q.id] for q in topics if q.id in judged}))
    if query is not None:
        table = Table("rank", "doc id", "score")
        for rank, hit in enumerate(run["q"], start=1):
            table.add_row(str(rank), hit.doc_id, f"{hit.score:.4f}")
        console.print(table)
    if run_out is not None:
        run.write_trec(run_out)
        console.print(f"wrote {sum(len(h) for h in run.values())} hits for {len(run)} queries to {run_out}")
    elif query is None:
        for qid, hits in run.items():
            for rank, hit in enumerate(hits, start=1):
                out.print(f"{qid} Q0 {hit.doc_id} {rank} {hit.score:.6f} {run.name}")


def parse_day(value: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{flag} {value!r}: expected a date YYYY-MM-DD") from None


def print_eval(result: RankingEval, title: str = "") -> None:
    table = Table(title=title or None)
    table.add_column("run")
    for name in result.aggregate:
        table.add_column(name, justify="right")
    table.add_column("queries", justify="right")
    table.add_row(result.run_name, *(f"{v:.4f}" for v in result.aggregate.values()), str(result.num_queries))
    console.print(table)


def eval_(
    run_file: Annotated[Path, typer.Option("--run", help="TREC run file")],
    dataset: DatasetOpt = None,
    split: SplitOpt = "test",
    qrels: Annotated[Path | None, typer.Option(help="qrels file (instead of --dataset)")] = None,
    measure: Annotated[list[str] | None,
                       typer.Option(help="measure(s); default nDCG@10 MRR@10 R@100 MAP")] = None,
    json_out: Annotated[Path | None,
                        typer.Option("--out", help="write aggregate + per-query JSON here")] = None,
) -> None:
    """Evaluate a run with ir_measures and print a table (and JSON with --out)."""
    if (dataset is None) == (qrels is None):
        raise ConfigError("give exactly one of --dataset or --qrels")
    run = Run.read_trec(run_file)
    judgements = load_dataset(dataset_path(dataset), split).qrels if dataset else Qrels.read_trec(qrels)
    if judgements is None:
        raise ConfigError(f"dataset {dataset} has no qrels for split {split!r}")
    if max((g for docs in judgements.values() for g in docs.values()), default=0) > 3:
        # e.g. `sparsa judge --gains expected-gain`: gains of 100 x an expected grade, meant for nDCG only
        console.print("warning: qrels grades go above 3 (expected-gain qrels?): nDCG is scale-free, but "
                      "MRR, recall and MAP count every grade >= 1 as relevant")
    result = evaluate_run(run, judgements, measure or tuple(DEFAULT_MEASURES))
    print_eval(result)
    if json_out is not None:
        result.write_json(json_out)
        console.print(f"wrote {json_out}")
