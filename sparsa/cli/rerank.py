"""``sparsa rerank``: rerank a first-stage run with a registered reranker and write a TREC run.

    sparsa rerank --run bm25.trec --dataset scifact --reranker tildev2 --rerank-model STORE --top-k 100 \
        --out reranked.trec

A TILDEv2 store comes from ``sparsa rerank-store`` (``sparsa/cli/tilde.py``).

Calls :func:`sparsa.rerank.rerank_run` with ``RERANKERS.get(name).load(model)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsa.cli.common import console, dataset_path
from sparsa.errors import ConfigError


def rerank(
    run_file: Annotated[Path, typer.Option("--run", help="first-stage run (TREC format)")],
    dataset: Annotated[str,
                       typer.Option(help="dataset folder or name under the data dir: queries and passages")],
    out: Annotated[Path, typer.Option("--out", help="write the reranked run here (TREC format)")],
    reranker: Annotated[str,
                        typer.Option(help="registered reranker: tildev2 or query-likelihood")] = "tildev2",
    model: Annotated[str | None, typer.Option(
        "--model", "--rerank-model",
        help="tildev2: the passage store folder (sparsa rerank-store); query-likelihood: LM name or folder")]
    = None,
    split: Annotated[str, typer.Option(help="qrels split whose queries the run answers")] = "test",
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=10_000,
                                       help="rerank each query's top k hits; the "
                                            "output keeps those k")] = 100,
    pool: Annotated[Path | None, typer.Option(
        help="qrels file: the candidates are each judged query's judged documents, in the run's order "
             "(unretrieved ones last), all reranked; --top-k then only cuts the output")] = None,
    max_passage_tokens: Annotated[int | None, typer.Option(
        min=1, help="query-likelihood: tokens kept of each passage [default: 256; the published SciFact "
                    "figures used 128]")] = None,
) -> None:
    """Rerank each query's top-k hits of a run; queries and passage texts come from the dataset."""
    from sparsa.data import load_dataset
    from sparsa.registry import RERANKERS
    from sparsa.rerank import rerank_run
    from sparsa.types import Run

    cls = RERANKERS.get(reranker)  # unknown names fail here, listing the known ones
    if reranker == "tildev2" and model is None:
        raise ConfigError("tildev2 needs --model: a TILDEv2 passage store folder (sparsa rerank-store)")
    if max_passage_tokens is not None and reranker != "query-likelihood":
        raise ConfigError(f"--max-passage-tokens is a query-likelihood setting; {reranker} keeps the passage "
                          "length its store or model was built with")
    first_stage = Run.read_trec(run_file)
    data = load_dataset(dataset_path(dataset), split)
    depth: int | None = top_k
    if pool is not None:
        from sparsa.eval.pool import judged_pool_run
        from sparsa.types import Qrels

        judged = Qrels.read_trec(pool)
        first_stage = judged_pool_run(first_stage, Qrels({q: judged[q] for q in first_stage if q in judged}))
        depth = None
    reranked = rerank_run(_load(cls, model, max_passage_tokens), first_stage, data.queries,
                          data.corpus, depth=depth, top_k=top_k)
    reranked.write_trec(out)
    console.print(f"reranked {len(reranked)} queries (top {top_k}) with {reranker}; wrote {out}")


def _load(cls, model: str | None, max_passage_tokens: int | None):
    """``cls.load(model)``, or a query-likelihood reranker that cuts passages to ``max_passage_tokens``."""
    if max_passage_tokens is None:
        return cls.load(model)
    from sparsa.rerank.query_likelihood import QueryLikelihoodConfig

    config = QueryLikelihoodConfig(max_passage_tokens=max_passage_tokens,
                                   **({"model": str(model)} if model else {}))
    return cls(config)
