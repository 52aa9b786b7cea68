"""``sparsa train amar``: train Amar's relevance gates and self-alignment on KGQA questions: MetaQA dev
questions (``--data``), or any triples file with a question file (``--kg`` and ``--qa``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsa.cli.common import console
from sparsa.errors import ConfigError


def train_amar_command(
    out: Annotated[Path, typer.Option(help="folder for the trained head (resumes from its checkpoint)")],
    data: Annotated[Path | None,
                    typer.Option(help="MetaQA folder (kb_reconstructed.txt.gz, 1-hop/, 2-hop/...)")]
    = None,
    kg: Annotated[Path | None, typer.Option(help="or a triples file: head<TAB>relation<TAB>tail lines "
                                                 "(with --qa)")] = None,
    qa: Annotated[Path | None,
                  typer.Option(help="with --kg: training questions, question<TAB>answer1|answer2 "
                                    "lines (MetaQA's format)")] = None,
    hops: Annotated[list[int], typer.Option(help="question sets to train on")] = [1, 2],  # noqa: B006
    split: Annotated[str, typer.Option(help="never test")] = "dev",
    questions: Annotated[int, typer.Option(help="questions per hop (fixed random subset)")] = 1000,
    model: Annotated[str, typer.Option(help="the chat LM the head reads with: registry name or folder")]
    = "smollm2-135m-instruct",
    gate_epochs: Annotated[int, typer.Option()] = 4,
    gate_batch: Annotated[int, typer.Option(help="questions per gate/alignment step")] = 8,
    lm_steps: Annotated[int, typer.Option(help="answer-loss steps through the frozen LM")] = 100,
    lm_batch: Annotated[int, typer.Option()] = 2,
    lora_rank: Annotated[int, typer.Option(help="LoRA adapters on the LM (0: the LM stays frozen)")] = 0,
    time_limit: Annotated[float | None,
                          typer.Option(help="stop answer-loss training after this many s")] = None,
    cache: Annotated[Path | None, typer.Option(help="pickle of retrievals to reuse")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Gate + alignment training (cheap), then the answer loss through the frozen LM."""
    from sparsa.kg.amar import AmarConfig, AmarModel
    from sparsa.kg.amar_train import AmarTrainConfig, train_amar
    from sparsa.kg.kg import (
        KGRetriever,
        KnowledgeGraph,
        load_metaqa,
        read_kg_questions,
        retrieve_cached,
        sample_questions,
    )

    if (data is None) == (kg is None) or (kg is None) != (qa is None):
        raise ConfigError("give --data (a MetaQA folder) or --kg FILE with --qa FILE")
    if data is not None:
        if split == "test":
            raise ConfigError("refusing to train on the test split")
        graph = KnowledgeGraph.load(data / "kb_reconstructed.txt.gz")
        asked = [q for h in hops for q in load_metaqa(data, h, split, limit=questions, seed=seed)]
    else:
        graph = KnowledgeGraph.load(kg)
        asked = sample_questions(read_kg_questions(qa, "q"), questions, seed)
    if not asked:
        raise ConfigError("no training questions")
    retrievals = retrieve_cached(KGRetriever(graph), asked, cache)
    config = AmarTrainConfig(gate_epochs=gate_epochs, gate_batch=gate_batch, lm_steps=lm_steps,
                             lm_batch=lm_batch, seed=seed)
    record = train_amar(AmarModel(AmarConfig(model=model, lora_rank=lora_rank)),
                        retrievals, asked, out, config, time_limit_s=time_limit)
    console.print(f"trained Amar head in {out}: {record['gate_epochs']} gate epochs, {record['lm_steps']} "
                  f"answer steps on {record['questions']} questions; ask with "
                  f"'sparsa kg ask QUESTION --kg FILE --head {out}'")
