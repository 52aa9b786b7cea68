"""``sparsa train splade``: fine-tune a SPLADE encoder on labelled pairs plus self-supervised pairs;
``sparsa train judge``: fine-tune the relevance judge (UMBRELA scorer) on graded pairs of the first N queries
of a dataset, or on a labelled-pairs JSONL file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsa.cli import amar, router, tilde
from sparsa.cli.common import console, dataset_path
from sparsa.errors import ConfigError, SparsaError

app = typer.Typer(help="Train encoders.", no_args_is_help=True)
app.command("amar")(amar.train_amar_command)
app.command("router")(router.train_router_command)
app.command("tilde")(tilde.train_tilde_command)
app.command("tildev2")(tilde.train_tildev2_command)


# Mistral-SPLADE's published run (bench/gpu_mistral_splade.sh) and the encoder fine-tune's defaults.
DECODER_DEFAULTS = {"model": "smollm2-135m-instruct", "steps": 600, "batch_size": 32, "lr": 2e-4,
                    "warmup_steps": 50}
ENCODER_DEFAULTS = {"model": "splade-tiny", "steps": 1000, "batch_size": 16, "lr": 5e-5, "warmup_steps": 100}


@app.command("splade")
def splade(
    out: Annotated[Path,
                   typer.Option(help="folder for the trained model (resumes if a checkpoint is there)")],
    model: Annotated[str | None, typer.Option(help="starting model: registry name, folder or hub id "
                                                   "(default splade-tiny; --decoder: smollm2-135m-instruct)")]
    = None,
    dataset: Annotated[str | None, typer.Option(help="dataset with labelled training queries")] = None,
    split: Annotated[str, typer.Option(help="qrels split to train on (never test)")] = "train",
    first_stage: Annotated[str | None, typer.Option(help="BM25 index to mine hard negatives from")] = None,
    negatives: Annotated[int, typer.Option(min=1, help="hard negatives per example, mined and all used in "
                                                       "the loss (with --examples: at most this many)")] = 4,
    self_supervised: Annotated[int, typer.Option(help="title->body pairs from the corpus (0: none)")] = 2000,
    examples: Annotated[Path | None, typer.Option(help="train from a prepared examples file instead")] = None,
    save_examples: Annotated[Path | None, typer.Option(help="write the examples (JSONL[.gz]) and stop")]
    = None,
    steps: Annotated[int | None, typer.Option(min=1, help="default 1000; --decoder 600")] = None,
    batch_size: Annotated[int | None, typer.Option(min=2, help="default 16; --decoder 32")] = None,
    lr: Annotated[float | None, typer.Option(help="default 5e-5; --decoder 2e-4")] = None,
    warmup_steps: Annotated[int | None, typer.Option(min=0, help="default 100; --decoder 50")] = None,
    lambda_query: Annotated[float, typer.Option()] = 1e-3,
    lambda_doc: Annotated[float, typer.Option()] = 1e-3,
    decoder: Annotated[bool, typer.Option(help="decoder backbone (Mistral-SPLADE: echo input, LoRA); its "
                                               "defaults are the published run's")] = False,
    lora_rank: Annotated[int, typer.Option(min=1, help="--decoder: rank of the LoRA adapters")] = 16,
    initial_doc_terms: Annotated[int, typer.Option(min=1, help="--decoder: the term bias starts where a "
                                                               "document keeps about this many terms")] = 256,
    gradient_checkpointing: Annotated[bool, typer.Option(help="recompute the backbone's activations in "
                                                              "the backward: less memory, ~1/3 more time "
                                                              "(a 1.5B decoder at batch 32 needs it)")]
    = False,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="save a resumable checkpoint every N steps")]
    = 200,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """Fine-tune SPLADE: contrastive loss with in-batch and hard negatives, FLOPS regularisation."""
    from sparsa.retrieval.splade import SpladeConfig
    from sparsa.retrieval.splade_train import SpladeTrainConfig, train_splade
    from sparsa.retrieval.training_data import read_examples, write_examples

    if split == "test":
        raise ConfigError("refusing to train on the test split")
    settings = DECODER_DEFAULTS if decoder else ENCODER_DEFAULTS
    given = {"model": model, "steps": steps, "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps}
    chosen = {key: settings[key] if value is None else value for key, value in given.items()}
    _check_backbone(chosen["model"], decoder)
    if examples is not None:
        prepared, described = read_examples(examples), {"examples_file": str(examples)}
    else:
        prepared, described = _mine_examples(dataset, split, first_stage, negatives, self_supervised)
    used = min([negatives, *(len(e.negatives) for e in prepared)])
    if used < 1:
        raise ConfigError("some examples have no negatives; mine them with --dataset and --first-stage")
    console.print(f"{len(prepared)} training examples, {used} hard negatives each: {described}")
    if save_examples is not None:
        write_examples(prepared, save_examples)
        console.print(f"wrote {save_examples}")
        return
    encoder = SpladeConfig.mistral_splade(chosen["model"]) if decoder else SpladeConfig(model=chosen["model"])
    config = SpladeTrainConfig(encoder=encoder, steps=chosen["steps"], batch_size=chosen["batch_size"],
                               lr=chosen["lr"], warmup_steps=chosen["warmup_steps"], negatives_per_query=used,
                               lambda_query=lambda_query, lambda_doc=lambda_doc, lora_rank=lora_rank,
                               initial_doc_terms=initial_doc_terms,
                               gradient_checkpointing=gradient_checkpointing,
                               checkpoint_every=checkpoint_every)
    folder = train_splade(prepared, out, config, device=device, data_description=described)
    console.print(f"trained model in {folder}; use it with --model {folder}")


def _check_backbone(model: str, decoder: bool) -> None:
    """A masked LM with --decoder is refused before anything loads (it has no layers LoRA adapts)."""
    import json

    from sparsa.models import resolve_model

    try:
        config = Path(resolve_model(model)) / "config.json"
    except SparsaError:
        return  # a hub id: transformers reports what it finds
    archs = json.loads(config.read_text()).get("architectures") or [] if config.is_file() else []
    if decoder and any(a.endswith("ForMaskedLM") for a in archs):
        raise ConfigError(f"--decoder trains a causal LM backbone (Mistral-SPLADE), but {model} is a masked "
                          f"LM ({archs[0]}); leave --model out (smollm2-135m-instruct) or give a causal LM")


@app.command("judge")
def judge(
    out: Annotated[Path, typer.Option(help="folder for the fine-tuned judge (a plain HF causal LM)")],
    dataset: Annotated[str | None, typer.Option(
        help="dataset folder or name under the data dir, with graded qrels: train on its first "
             "--fit-queries queries")] = None,
    pairs: Annotated[Path | None, typer.Option(help="or train on labelled pairs: JSONL[.gz], one object a "
                                                    "line with query, passage, grade (0-3) and optional "
                                                    "query_id, doc_id, title, source")] = None,
    fit_queries: Annotated[int, typer.Option(min=1, help="with --dataset: train on the first N query ids "
                                                         "(sorted); the others stay held out, as in 'sparsa "
                                                         "judge --fit-queries'")] = 21,
    model: Annotated[str, typer.Option(
        help="starting LM: registry name or local folder")] = "smollm2-135m-instruct",
    epochs: Annotated[int, typer.Option(min=1)] = 1,
    lr: Annotated[float, typer.Option()] = 2e-5,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lora_rank: Annotated[int,
                         typer.Option(min=0, help="0: full fine-tune; else LoRA of this rank, merged")] = 0,
    max_passage_tokens: Annotated[int, typer.Option(min=1, help="cut passages as 'sparsa judge' will")] = 192,
    split: Annotated[str, typer.Option(help="with --dataset: the qrels split holding the grades")] = "test",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """Fine-tune the judge LM so that its UMBRELA prompt's label tokens 0-3 predict the human grades
    (of a dataset's first queries, or of a pairs file); use the result with 'sparsa judge --model OUT'."""
    from sparsa.judge.train import (
        JudgeTrainConfig,
        describe_pairs,
        labelled_pairs,
        read_labelled_pairs,
        train_judge,
    )

    if (dataset is None) == (pairs is None):
        raise ConfigError("give --dataset (graded qrels, first --fit-queries queries) or "
                          "--pairs FILE, not both")
    config = JudgeTrainConfig(model=model, epochs=epochs, lr=lr, batch_size=batch_size, lora_rank=lora_rank,
                              max_passage_tokens=max_passage_tokens)
    if pairs is not None:
        labelled = read_labelled_pairs(pairs)
        described = {"pairs_file": str(pairs), **describe_pairs(labelled)}
        console.print(f"{len(labelled)} labelled pairs ({described['queries']} queries) from {pairs}")
    else:
        path = dataset_path(dataset)
        labelled, fit = labelled_pairs(path, fit_queries, split)
        described = {"dataset": path.name, "split": split, "fit_queries": fit, "pairs": len(labelled)}
        console.print(f"{len(labelled)} labelled pairs from the first {len(fit)} queries of {path.name}")
    folder = train_judge(labelled, out, config, device=device, data_description=described)
    console.print(f"fine-tuned judge in {folder}; use it with 'sparsa judge --model {folder}'")


def _mine_examples(dataset: str | None, split: str, first_stage: str | None, negatives: int,
                   self_supervised: int) -> tuple[list, dict]:
    from sparsa.data import load_dataset
    from sparsa.retrieval.training_data import labelled_examples, title_body_examples
    from sparsa.search import open_retriever
    from sparsa.types import Query

    if dataset is None or first_stage is None:
        raise ConfigError("give --dataset and --first-stage (a BM25 index of its corpus), or --examples")
    data = load_dataset(dataset_path(dataset), split)
    bm25 = open_retriever(first_stage)
    labelled = labelled_examples(data.queries, data.qrels, data.corpus,
                                 bm25.search(data.queries, k=negatives + 20), negatives)
    described = {"dataset": data.name, "split": split, "queries": len(data.queries),
                 "labelled": len(labelled), "negatives": f"BM25 top-{negatives + 20} minus relevant"}
    pseudo = []
    if self_supervised:
        titled = [Query(d.id, d.title) for d in data.corpus.documents if d.title.strip()]
        title_run = bm25.search(titled, k=negatives + 10)
        pseudo = title_body_examples(data.corpus, title_run, negatives, limit=self_supervised)
        described["self_supervised"] = f"{len(pseudo)} title->body pairs from the corpus"
    return labelled + pseudo, described
