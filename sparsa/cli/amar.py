"""``sparsa train amar``: train Amar's relevance gates and self-alignment on KGQA questions: MetaQA dev
questions (``--data``), or any triples file with a question file (``--kg`` and ``--qa``).

The record's two steps (``bench/bench_amar.py``) are two commands: stage 1 (``--lm-steps 0``), then stage 2
from that head (``--init-head``: no gate epochs unless asked) with the settings ``sparsa kg tune`` chose
(``--settings``). ``--val-questions`` holds questions out of the draw for ``sparsa kg tune``
(``sparsa.kg.amar_tune.split_dev``: the draw bench_amar.py makes)."""

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
    questions: Annotated[int, typer.Option(help="questions per hop to train on (fixed random subset)")]
    = 1000,
    val_questions: Annotated[int, typer.Option(help="more questions per hop drawn and held out (the "
                                                    "record: 250) for 'sparsa kg tune'")] = 0,
    model: Annotated[str | None, typer.Option(help="the chat LM the head reads with: registry name or "
                                                   "folder (default smollm2-135m-instruct)")] = None,
    init_head: Annotated[Path | None, typer.Option(help="start from this head (its LM, gates and "
                                                        "alignment), e.g. stage 1's")] = None,
    settings: Annotated[Path | None, typer.Option(help="gate settings the prompts are built with: JSON "
                                                       "from 'sparsa kg tune --out'")] = None,
    gate_epochs: Annotated[int | None, typer.Option(help="gate/alignment epochs (default 4; 0 with "
                                                         "--init-head)")] = None,
    gate_batch: Annotated[int, typer.Option(help="questions per gate/alignment step")] = 8,
    lm_steps: Annotated[int, typer.Option(help="answer-loss steps through the frozen LM")] = 100,
    lm_batch: Annotated[int, typer.Option()] = 2,
    lora_rank: Annotated[int, typer.Option(help="LoRA adapters on the LM (0: the LM stays frozen, or "
                                                "an --init-head keeps its own)")] = 0,
    train_mode: Annotated[str, typer.Option(help="answer-loss prompt: amar, or text (every item as text: "
                                                 "only LoRA adapters learn, the record's control)")]
    = "amar",
    time_limit: Annotated[float | None,
                          typer.Option(help="stop answer-loss training after this many s")] = None,
    cache: Annotated[Path | None, typer.Option(help="pickle of retrievals to reuse")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    seed: Annotated[int, typer.Option(help="seeds the question draw and the training")] = 0,
) -> None:
    """Gate + alignment training (cheap), then the answer loss through the frozen LM (or LoRA adapters)."""
    from sparsa.kg.amar import AmarConfig, AmarModel
    from sparsa.kg.amar_train import AmarTrainConfig, train_amar
    from sparsa.kg.amar_tune import question_sets, read_settings, record_precision
    from sparsa.kg.kg import KGRetriever, KnowledgeGraph, retrieve_cached
    from sparsa.training import seed_everything

    if init_head is not None and model is not None:
        raise ConfigError("--model and --init-head: a head reads with the LM it was trained with; give one")
    sets = question_sets(data, kg, qa, hops, split, questions, val_questions, seed)
    asked = [q for qs in sets.train.values() for q in qs]
    if not asked:
        raise ConfigError("no training questions")
    gate_settings = read_settings(settings)[1] if settings is not None else {}
    config = AmarTrainConfig(gate_epochs=(0 if init_head is not None else 4) if gate_epochs is None
                             else gate_epochs, gate_batch=gate_batch, lm_steps=lm_steps, lm_batch=lm_batch,
                             train_mode=train_mode, seed=seed)
    retrievals = retrieve_cached(KGRetriever(KnowledgeGraph.load(sets.graph)), asked, cache)
    seed_everything(seed)  # fresh gates or adapters start the same on every run
    record_precision(device)
    if init_head is not None:
        reader = AmarModel.load(init_head, device, **({"lora_rank": lora_rank} if lora_rank else {}),
                                **gate_settings)
    else:
        reader = AmarModel(AmarConfig(**({"model": model} if model else {}), lora_rank=lora_rank,
                                      **gate_settings), device)
    meta = {"init_head": str(init_head) if init_head is not None else None, "draw": sets.draw}
    record = train_amar(reader, retrievals, asked, out, config, time_limit_s=time_limit, meta=meta)
    console.print(f"trained Amar head in {out}: {record['gate_epochs']} gate epochs, {record['lm_steps']} "
                  f"answer steps on {record['questions']} questions"
                  + (f" from {init_head}" if init_head is not None else "")
                  + (f"; read it with 'sparsa kg eval --head {out} --mode text'" if train_mode == "text"
                     else f"; choose its settings with 'sparsa kg tune --head {out}' (the same draw flags)"
                     if val_questions else f"; ask with 'sparsa kg ask QUESTION --kg FILE --head {out}'"))
