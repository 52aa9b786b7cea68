"""``sparsa train dense`` (pre-training tasks, optional fine-tuning) and ``sparsa fuse`` (hybrid runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsa.cli.common import console, dataset_path
from sparsa.errors import ConfigError


def train_dense(
    out: Annotated[Path, typer.Option(help="folder for the trained sentence-transformers model")],
    dataset: Annotated[str, typer.Option(help="dataset whose corpus the pre-training pairs come from")],
    task: Annotated[str, typer.Option(help="pre-training task: ict, bfs, wlp, mix, or none")] = "mix",
    model: Annotated[str, typer.Option(help="starting model: registry name, folder or hub id")] = "minilm-l6",
    steps: Annotated[int, typer.Option(min=0, help="pre-training steps")] = 120,
    pairs_per_doc: Annotated[int, typer.Option(min=1, help="pre-training pairs drawn per document")] = 1,
    fine_tune_split: Annotated[str | None,
                               typer.Option(help="then fine-tune on this split's qrels (never test)")] = None,
    fine_tune_steps: Annotated[int, typer.Option(min=1)] = 100,
    batch_size: Annotated[int, typer.Option(min=2, help="pairs per batch (in-batch negatives)")] = 64,
    lr: Annotated[float, typer.Option()] = 2e-5,
    fine_tune_lr: Annotated[float, typer.Option()] = 2e-5,
    max_passage_length: Annotated[int, typer.Option(min=8)] = 256,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    pooling: Annotated[str, typer.Option(help="mean, cls or max; auto: as the start model's "
                                              "sentence-transformers files say")] = "auto",
    normalize: Annotated[bool | None, typer.Option("--normalize/--no-normalize", help="L2-normalise "
                                                   "(default: as the start model's files say)")] = None,
    query_prefix: Annotated[str, typer.Option(help="text before every training query (e5: 'query: ')")] = "",
    doc_prefix: Annotated[str, typer.Option(help="text before every training passage (e5: 'passage: ')")]
    = "",
) -> None:
    """Adapt a dense encoder to a corpus with no labels (Chang et al. 2020), then optionally fine-tune.

    The output loads with --model <out> in 'sparsa index --kind dense' and in sentence-transformers;
    its sparsa.json records the data, steps and wall time of each stage.
    """
    from sparsa.data import load_corpus, load_dataset
    from sparsa.retrieval.dense_pretrain import TASKS, labelled_pairs, pretraining_pairs
    from sparsa.retrieval.dense_train import DenseTrainConfig, Stage
    from sparsa.retrieval.dense_train import train_dense as run_training

    if fine_tune_split == "test":
        raise ConfigError("refusing to fine-tune on the test split")
    if task != "none" and task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; known: {', '.join(TASKS)}, none")
    folder = dataset_path(dataset)
    stages = []
    if task != "none" and steps:
        corpus = load_corpus(folder)
        pairs = [p for seed in range(pairs_per_doc) for p in pretraining_pairs(corpus, task, seed=13 + seed)]
        described = {"dataset": folder.name, "task": task, "pairs_per_doc": pairs_per_doc, "lr": lr,
                     "labels": "none (self-supervised)"}
        stages.append(Stage(task, pairs, steps, described))
    if fine_tune_split:
        data = load_dataset(folder, fine_tune_split)
        pairs = labelled_pairs(data.queries, data.qrels, data.corpus)
        stages.append(Stage("fine-tune", pairs, fine_tune_steps,
                            {"dataset": folder.name, "split": fine_tune_split, "queries": len(data.queries),
                             "lr": fine_tune_lr}))
    if not stages:
        raise ConfigError("nothing to train: give --task (with --steps > 0) and/or --fine-tune-split")
    for stage in stages:
        console.print(f"{stage.name}: {len(stage.pairs)} pairs, {stage.steps} steps")
    base = model
    for stage in stages:  # one call per stage: each has its own learning rate and schedule
        config = DenseTrainConfig(model=base, batch_size=batch_size, max_passage_length=max_passage_length,
                                  lr=stage.description.get("lr", lr), pooling=pooling, normalize=normalize,
                                  query_prefix=query_prefix, doc_prefix=doc_prefix)
        run_training([stage], out, config, device=device)
        base = str(out)
    prefixes = "".join(f" --{flag} {value!r}" for flag, value in (("query-prefix", query_prefix),
                                                                  ("doc-prefix", doc_prefix)) if value)
    console.print(f"trained model in {out}; index with: sparsa index --kind dense --model {out}{prefixes} "
                  "...")


def fuse(
    run_files: Annotated[list[Path], typer.Option("--run", help="TREC run file (give two or more)")],
    out: Annotated[Path, typer.Option(help="fused run (TREC format)")],
    method: Annotated[str, typer.Option(help="rrf or interp")] = "rrf",
    weights: Annotated[list[float] | None,
                       typer.Option("--weight", help="one per --run, in order (default 1)")] = None,
    normalisation: Annotated[str, typer.Option(help="interp: minmax or zscore")] = "minmax",
    depth: Annotated[int | None,
                     typer.Option(min=1, help="hits of each run that take part (default all)")] = None,
    k: Annotated[int, typer.Option(min=1, help="fused hits kept per query")] = 1000,
    rrf_k: Annotated[float, typer.Option(min=0, help="rrf: rank offset")] = 60.0,
) -> None:
    """Fuse runs by reciprocal rank or normalised score interpolation."""
    from sparsa.retrieval.fusion import fuse as fuse_runs
    from sparsa.types import Run

    if len(run_files) < 2:
        raise ConfigError("give at least two --run files to fuse")
    if normalisation not in ("minmax", "zscore"):
        raise ConfigError(f"unknown normalisation {normalisation!r}; known: minmax, zscore")
    runs = [Run.read_trec(path) for path in run_files]
    fused = fuse_runs(runs, method, weights, k=k, depth=depth,
                      normalisation=normalisation, rrf_k=rrf_k)  # type: ignore[arg-type]
    fused.write_trec(out)
    console.print(f"fused {len(runs)} runs ({method}) over {len(fused)} queries into {out}")
