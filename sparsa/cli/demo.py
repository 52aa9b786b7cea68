"""``sparsa demo``: the main job on the embedded default, end to end.

Pulls the models the demo runs (SPLADE's and the reader's defaults; the others, such as the optional
Qwen2.5 reader, are pulled on first use or by ``sparsa models pull --all``), indexes SciFact with BM25
(once), runs its test queries, prints example results and the effectiveness table.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from sparsa import models
from sparsa.cli.common import console, dataset_path
from sparsa.cli.retrieval import print_eval
from sparsa.config import index_path
from sparsa.data import load_dataset
from sparsa.eval import evaluate_run
from sparsa.search import open_retriever

EXAMPLES = 3


def demo(
    dataset: Annotated[str, typer.Option(help="dataset folder or name")] = "scifact",
    index_name: Annotated[str, typer.Option("--index", help="index name or folder")] = "scifact-bm25",
    rebuild: Annotated[bool, typer.Option(help="rebuild the index even if it exists")] = False,
) -> None:
    """Pull the demo's models, index SciFact (BM25), search its test queries and report nDCG@10."""
    from sparsa.indexes import build_index
    from sparsa.rag.config import ReaderConfig
    from sparsa.retrieval.splade import SpladeConfig

    # what the demo's next steps run: the SPLADE index, then `ask` and `serve`'s /qa
    for name in (SpladeConfig().model, ReaderConfig().model):
        console.print(f"model {name}: {models.pull(name)}")
    data = load_dataset(dataset_path(dataset))
    path = index_path(index_name)
    if rebuild or not (path / "sparsa.json").is_file():
        build_index("bm25", data.corpus, path)
    retriever = open_retriever(path)
    console.print(f"index: {retriever}")

    run = retriever.search(data.queries, k=100)  # enough for nDCG@10 and R@100; bench/ uses k=1000
    for query in data.queries[:EXAMPLES]:
        table = Table("rank", "doc id", "score", "relevant", "title", title=f"query {query.id}: {query.text}")
        for rank, hit in enumerate(run[query.id][:3], start=1):
            relevant = "yes" if data.qrels and data.qrels[query.id].get(hit.doc_id, 0) > 0 else ""
            table.add_row(str(rank), hit.doc_id, f"{hit.score:.2f}", relevant,
                          data.corpus[hit.doc_id].title[:70])
        console.print(table)
    if data.qrels is not None:
        print_eval(evaluate_run(run, data.qrels),
                   title=f"{data.name} {data.split}: {len(data.queries)} queries")
