"""``sparsa train tilde``, ``sparsa train tildev2`` and ``sparsa rerank-store``: the TILDEv2 reranker
from a user's own dataset.

    sparsa train tilde --dataset scifact --out models/tilde-scifact               # expansion model
    sparsa train tildev2 --dataset scifact --first-stage scifact-bm25 --expander models/tilde-scifact \
        --out models/tildev2-scifact                                             # the token weigher
    sparsa rerank-store --dataset scifact --model models/tildev2-scifact --out stores/scifact-tildev2
    sparsa rerank --run bm25.trec --dataset scifact --reranker tildev2 --rerank-model stores/scifact-tildev2 \
        --out tildev2.trec

TILDE learns from the split's (query, relevant passage) pairs and, by default, every title->body pair
of the corpus; TILDEv2 from the same labelled pairs with the first stage's top non-relevant passages as
hard negatives (``--examples`` reads prepared ones instead). The defaults are the settings of
``bench/bench_rerank.py --stages train stores``. The store job is built like an index: atomic, in
checkpointed shards a rerun resumes, refusing to replace a published store without ``--replace``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsa.cli.common import console, dataset_path
from sparsa.errors import ConfigError

DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda")]


def train_tilde_command(
    out: Annotated[Path, typer.Option(help="folder for the TILDE expansion model")],
    dataset: Annotated[str, typer.Option(help="dataset with labelled training queries (its corpus too)")],
    split: Annotated[str, typer.Option(help="qrels split to train on (never test)")] = "train",
    title_body: Annotated[bool, typer.Option(help="also train on every title->body pair of the corpus")]
    = True,
    model: Annotated[str, typer.Option(help="BertForMaskedLM to start from: registry name or folder")]
    = "splade-tiny",
    steps: Annotated[int, typer.Option(min=1)] = 150,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option()] = 2e-4,
    expansion_terms: Annotated[int, typer.Option(min=0, help="new terms added to each passage")] = 64,
    max_passage_tokens: Annotated[int, typer.Option(min=1)] = 192,
    seed: Annotated[int, typer.Option(help="seeds the example order and dropout")] = 13,
    device: DeviceOpt = "auto",
) -> None:
    """Train TILDE: which query terms a passage is likely to be searched with (its expansion)."""
    from sparsa.config import resolve_device
    from sparsa.data import load_dataset
    from sparsa.rerank.tilde_expansion import TildeConfig, TildeTrainConfig, train_tilde
    from sparsa.rerank.training import OptimConfig
    from sparsa.retrieval.training_data import labelled_examples, title_body_examples
    from sparsa.types import Run

    if split == "test":
        raise ConfigError("refusing to train on the test split")
    data = load_dataset(dataset_path(dataset), split)
    labelled = labelled_examples(data.queries, data.qrels, data.corpus, Run({}), negatives=0)
    pairs = labelled + (title_body_examples(data.corpus, negatives=0) if title_body else [])
    config = TildeTrainConfig(
        TildeConfig(model=model, max_passage_tokens=max_passage_tokens, expansion_terms=expansion_terms,
                    batch_size=batch_size, device=resolve_device(device)),
        OptimConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(steps // 10, 1),
                    seed=seed))
    console.print(f"{len(pairs)} training pairs ({len(labelled)} labelled, {len(pairs) - len(labelled)} "
                  "title->body)")
    folder = train_tilde(pairs, out, config, data_description={
        "dataset": data.name, "split": split, "labelled_pairs": len(labelled),
        "title_body_pairs": len(pairs) - len(labelled), "started_from": model})
    console.print(f"trained TILDE in {folder}; use it with 'sparsa train tildev2 --expander {folder}'")


def train_tildev2_command(
    out: Annotated[Path, typer.Option(help="folder for the TILDEv2 model")],
    dataset: Annotated[str | None, typer.Option(help="dataset with labelled training queries")] = None,
    split: Annotated[str, typer.Option(help="qrels split to train on (never test)")] = "train",
    first_stage: Annotated[str | None, typer.Option(help="index to mine hard negatives from (BM25)")] = None,
    negatives: Annotated[int, typer.Option(min=1, help="mined negatives kept per example")] = 7,
    examples: Annotated[Path | None, typer.Option(help="or prepared examples (JSONL[.gz], as "
                                                       "'sparsa train splade --save-examples' writes)")]
    = None,
    expander: Annotated[Path | None, typer.Option(help="TILDE model (sparsa train tilde) expanding the "
                                                       "passages; none: no expansion")] = None,
    model: Annotated[str, typer.Option(help="BERT to start from: registry name or folder")] = "splade-tiny",
    steps: Annotated[int, typer.Option(min=1)] = 250,
    batch_size: Annotated[int, typer.Option(min=1, help="queries per step")] = 8,
    lr: Annotated[float, typer.Option()] = 2e-4,
    group_size: Annotated[int, typer.Option(min=2, help="the positive and group-size - 1 negatives")] = 4,
    max_passage_tokens: Annotated[int, typer.Option(min=1)] = 256,
    seed: Annotated[int, typer.Option(help="seeds the fresh head, the example order and dropout")] = 13,
    device: DeviceOpt = "auto",
) -> None:
    """Train TILDEv2: per-token passage weights for exact-match reranking, on hard negatives."""
    from sparsa.cli.train import _mine_examples
    from sparsa.config import resolve_device
    from sparsa.rerank.tilde_expansion import TildeExpander
    from sparsa.rerank.tilde_model import TildeV2Config, TildeV2TrainConfig, train_tildev2
    from sparsa.rerank.training import OptimConfig
    from sparsa.retrieval.training_data import read_examples

    if split == "test":
        raise ConfigError("refusing to train on the test split")
    if examples is not None:
        prepared, described = read_examples(examples), {"examples_file": str(examples)}
    else:
        prepared, described = _mine_examples(dataset, split, first_stage, negatives, 0)
    device = resolve_device(device)
    config = TildeV2TrainConfig(
        TildeV2Config(model=model, max_passage_tokens=max_passage_tokens, device=device),
        OptimConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(steps // 10, 1),
                    seed=seed),
        group_size=group_size)
    console.print(f"{len(prepared)} training examples: {described}")
    tilde = TildeExpander.load(expander, device) if expander is not None else None
    folder = train_tildev2(prepared, out, config, expander=tilde, data_description={**described,
                                                                                   "started_from": model})
    console.print(f"trained TILDEv2 in {folder}; build a passage store with "
                  f"'sparsa rerank-store --model {folder} --dataset ... --out STORE'")


def rerank_store(
    out: Annotated[Path, typer.Option(help="folder for the passage store")],
    model: Annotated[Path, typer.Option(help="TILDEv2 model folder (sparsa train tildev2)")],
    dataset: Annotated[str | None, typer.Option(help="dataset folder or name: its corpus is stored")] = None,
    corpus: Annotated[Path | None, typer.Option(help="or a corpus JSONL file")] = None,
    expander: Annotated[Path | None, typer.Option(help="TILDE model expanding the passages (default: the "
                                                       "one the TILDEv2 model was trained with)")] = None,
    no_expansion: Annotated[bool, typer.Option("--no-expansion", help="store unexpanded passages")] = False,
    batch_size: Annotated[int | None, typer.Option(min=1, help="passages weighed together (default: "
                                                              "the model's)")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="passages per checkpointed shard")] = 4096,
    device: DeviceOpt = "auto",
    replace: Annotated[bool, typer.Option("--replace", help="replace a store already at --out")] = False,
) -> None:
    """Build a TILDEv2 passage store for 'sparsa rerank --reranker tildev2' as one resumable, atomic job."""
    from sparsa.config import resolve_device
    from sparsa.data import load_corpus
    from sparsa.rerank.tilde import build_tildev2_store_job

    if (dataset is None) == (corpus is None):
        raise ConfigError("give exactly one of --dataset or --corpus")
    if no_expansion and expander is not None:
        raise ConfigError("--expander and --no-expansion: give one")
    docs = load_corpus(corpus if corpus is not None else dataset_path(dataset))
    name = dataset_path(dataset).name if dataset else None
    path = build_tildev2_store_job(docs, out, model, None if no_expansion else expander or "auto",
                                   resolve_device(device), replace, name, shard_size, batch_size=batch_size)
    console.print(f"stored {len(docs)} passages in {path}; rerank with 'sparsa rerank --reranker tildev2 "
                  f"--rerank-model {path}'")
