"""``sparsa generate-queries``: synthetic training pairs (InPars / Promptagator) for a corpus, in the
examples format ``sparsa train splade --examples`` reads."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from sparsa.cli.common import console, dataset_path


def generate_queries(
    corpus: Annotated[str, typer.Argument(help="dataset folder or name under the data dir, or a corpus "
                                               "JSONL[.gz] file (BEIR layout: _id, title, text)")],
    out: Annotated[Path, typer.Option(help="training pairs, JSONL[.gz] (query, positive, negatives); the "
                                           "generation log <name>.generated.jsonl beside it lets a rerun "
                                           "resume")],
    model: Annotated[str, typer.Option(help="causal LM: registry name or local folder")]
    = "smollm2-135m-instruct",
    examples: Annotated[Path | None, typer.Option(
        help="few-shot examples: JSONL, one {\"document\": ..., \"query\": ...} a line, 1-16 lines, never "
             "test queries (default: four SciFact train claims with their abstracts)")] = None,
    max_docs: Annotated[int | None, typer.Option(min=1, help="a seeded sample of this many documents "
                                                             "(default: all)")] = None,
    per_doc: Annotated[int, typer.Option(min=1, help="queries per document (over 1 needs --sample)")] = 1,
    sample: Annotated[bool, typer.Option(help="sample (--temperature, --top-p) instead of greedy decoding")]
    = False,
    temperature: Annotated[float, typer.Option()] = 0.7,
    top_p: Annotated[float, typer.Option()] = 0.95,
    seed: Annotated[int, typer.Option(help="document sample, sampling and random negatives")] = 13,
    batch_size: Annotated[int, typer.Option(min=1, help="documents per generation batch")] = 16,
    max_doc_tokens: Annotated[int, typer.Option(min=16, help="documents and examples are cut to this")] = 256,
    max_new_tokens: Annotated[int, typer.Option(min=4)] = 40,
    max_query_words: Annotated[int, typer.Option(min=1, help="longer outputs are rejected")] = 32,
    filter_index: Annotated[str | None, typer.Option(
        help="first-stage index over this corpus for the consistency filter and the negatives (name or "
             "folder; default: BM25 built over the corpus on the fly)")] = None,
    keep_top: Annotated[int, typer.Option(min=0, help="keep a pair if its document ranks within this many "
                                                      "hits for the query (0: keep every valid pair)")] = 3,
    negatives: Annotated[int, typer.Option(min=1, help="hard negatives per pair: the top hits other than "
                                                       "the document")] = 4,
    report: Annotated[Path | None, typer.Option(help="also write the counts and keep rate as JSON")] = None,
    generate_only: Annotated[bool, typer.Option(help="stop after writing the generation log (e.g. on a GPU "
                                                     "machine without Java); rerun without it to filter")]
    = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (the LM, and the filter's encoder)")]
    = "auto",
) -> None:
    """Write a query for each document with an LM prompted by a few (document, query) examples, keep the
    pairs whose document a first-stage retriever ranks within --keep-top for the query, and write them with
    hard negatives as training pairs. Resumable: a rerun skips documents already in the generation log."""
    from sparsa.data import load_corpus
    from sparsa.data.trec import write_jsonl
    from sparsa.retrieval.synthetic_queries import (
        DEFAULT_EXAMPLES,
        GenerationConfig,
        filter_pairs,
        generate,
        log_path,
        read_examples,
        select_documents,
    )

    config = GenerationConfig(model=model, per_doc=per_doc, batch_size=batch_size,
                              max_doc_tokens=max_doc_tokens, max_new_tokens=max_new_tokens,
                              max_query_words=max_query_words, sample=sample, temperature=temperature,
                              top_p=top_p, seed=seed, device=device)
    shots = read_examples(examples or DEFAULT_EXAMPLES)
    if filter_index is not None:
        _check_filter_index(filter_index)  # before the LM loads and generates
    docs = load_corpus(dataset_path(corpus))
    chosen = select_documents(docs, max_docs, seed)
    log = log_path(out)
    console.print(f"{len(chosen)} of {len(docs)} documents; {len(shots)} few-shot examples; log {log}")
    records = generate(config, shots, chosen, log)
    if generate_only:
        written = sum(len(r["queries"]) for r in records)
        console.print(f"{written} queries for {len(records)} documents in {log}; rerun without "
                      "--generate-only to filter them into pairs")
        return
    _free_gpu_memory()
    with tempfile.TemporaryDirectory(prefix="sparsa-bm25-") as tmp:
        retriever = _first_stage(docs, filter_index, Path(tmp), device)
        rows, counts = filter_pairs(records, docs, retriever, keep_top=keep_top, negatives=negatives,
                                    seed=seed)
    write_jsonl(rows, out)
    counts = {"corpus": str(corpus), "model": model, "filter": filter_index or "bm25 (built on the fly)",
              "examples": str(examples or DEFAULT_EXAMPLES.name), **counts}
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(counts, indent=1) + "\n")
    rejected = ", ".join(f"{n} {why}" for why, n in counts["rejected"].items()) or "none"
    console.print(f"{counts['generated']} queries for {counts['documents']} documents "
                  f"(rejected: {rejected}); "
                  f"kept {counts['kept']} of {counts['valid']} valid ({counts['keep_rate']:.1%}) "
                  f"{f'with the document in the top {keep_top}' if keep_top else '(no filter)'}; wrote {out}")


def _check_filter_index(name: str) -> None:
    from sparsa.artifacts import read_manifest
    from sparsa.config import index_path

    read_manifest(index_path(name), verify="none")


def _first_stage(corpus, filter_index: str | None, tmp: Path, device: str):
    from sparsa.search import open_retriever

    if filter_index is not None:
        return open_retriever(filter_index, device=None if device == "auto" else device)
    from sparsa.indexes import build_index_job

    return open_retriever(build_index_job("bm25", corpus, tmp / "bm25"))


def _free_gpu_memory() -> None:
    """The LM is gone once generation ends; a SPLADE or dense filter gets its memory."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
