"""``sparsa kg ask``: answer a question from a knowledge graph (KG retrieval, then Amar or KG-as-text).

    sparsa kg ask "who directed [Big]" --kg triples.tsv                       # KG as text, SmolLM2
    sparsa kg ask "who directed Big" --kg kb.tsv --head models/amar-head     # Amar's gated soft prompts
    sparsa kg ask "what movies did [Tom Hanks] act in" --kg ../shared/data/metaqa/kb_reconstructed.txt.gz

``--kg`` is a triples file, ``head<TAB>relation<TAB>tail`` a line (``.gz`` or plain; MetaQA's
``head|relation|tail`` also reads). :class:`sparsa.kg.KGRetriever` finds the topic entity (``[brackets]``,
else the longest span naming an entity, else the closest name), ranks relations and 1-2 hop paths
with minilm-l6, and the reader answers from them: ``text`` writes every retrieved item into the prompt,
``amar`` (with ``--head``, from ``sparsa train amar``) gates and aligns them as soft prompts, ``lm``
asks the LM alone. Any chat LM reads: its own chat template builds the prompt. The work is
``sparsa.kg.answer.KGReader``'s, which ``sparsa ask --kg`` and ``/qa`` with a ``[kg]`` chain share.

``sparsa kg eval`` scores Hits@1 on a question set; ``sparsa kg tune`` chooses a head's inference settings
on the questions ``sparsa train amar --val-questions`` held out (``sparsa.kg.amar_tune``, as
bench/bench_amar.py chose the record's), and ``kg eval --settings`` applies the choice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sparsa.cli.common import console, out
from sparsa.errors import ConfigError

app = typer.Typer(help="Knowledge-graph QA over a triples file.", no_args_is_help=True)


@app.command("ask")
def ask(
    question: Annotated[str, typer.Argument(help="the question; [brackets] may mark the topic entity")],
    kg: Annotated[Path, typer.Option(help="triples file: head<TAB>relation<TAB>tail lines (.gz or plain; "
                                          "MetaQA's head|relation|tail also reads)")],
    head: Annotated[Path | None, typer.Option(help="trained Amar head folder (sparsa train amar); "
                                                   "its LM is the reader")] = None,
    mode: Annotated[str | None, typer.Option(help="amar (needs --head), text (retrieved knowledge as text) "
                                                  "or lm (no knowledge); default amar with --head, "
                                                  "else text")] = None,
    model: Annotated[str | None, typer.Option(help="reader LM without --head: registry name or folder "
                                                   "with a chat template")] = None,
    max_paths: Annotated[int, typer.Option(min=1, help="relation paths retrieved")] = 6,
    max_hops: Annotated[int, typer.Option(min=1, max=2, help="longest path")] = 2,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, max=256, help="longest answer in tokens")]
    = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print the answer as one JSON object")] = False,
) -> None:
    """Answer a question from a knowledge graph; prints the answer, the topic entity and the knowledge."""
    from sparsa.kg.answer import KGReader

    if not question.strip():
        raise ConfigError("the question is empty")
    reader = KGReader(kg, head=head, model=model, mode=mode, max_paths=max_paths, max_hops=max_hops,
                      max_new_tokens=max_new_tokens, device=device)
    answer = reader.answer(question)
    if as_json:
        out.print(json.dumps({key: value for key, value in answer.to_dict().items() if key != "timings"}))
        return
    out.print(answer.answer)
    console.print(f"mode: {answer.mode}; topic entity: {answer.topic or 'none found'}; "
                  f"reader: {answer.reader}")
    for i, item in enumerate(answer.knowledge):
        mark = "*" if i in answer.shown else " "
        gate = f" gate {item['gate']:.2f}" if "gate" in item else ""
        console.print(f" {mark} [{item['kind']}] {item['text']}{gate}")


@app.command("eval")
def eval_(
    kg: Annotated[Path | None, typer.Option(help="triples file (as for kg ask); or --data")] = None,
    qa: Annotated[Path | None, typer.Option(help="with --kg: questions, question<TAB>answer1|answer2 "
                                                 "lines")] = None,
    data: Annotated[Path | None, typer.Option(help="or a MetaQA folder: its KB and "
                                                   "{hops}-hop/vanilla/qa_{split} questions")] = None,
    hops: Annotated[list[int] | None, typer.Option(help="--data: question sets (default 1 and 2)")] = None,
    split: Annotated[str, typer.Option(help="--data: dev or test")] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="questions per set: a fixed random subset")] = None,
    seed: Annotated[int, typer.Option(help="the subset's seed")] = 0,
    head: Annotated[Path | None, typer.Option(help="trained Amar head (sparsa train amar)")] = None,
    mode: Annotated[str | None, typer.Option(help="amar, text or lm (default amar with --head, "
                                                  "else text)")] = None,
    model: Annotated[str | None, typer.Option(help="reader LM without --head")] = None,
    gate_mode: Annotated[str | None, typer.Option(help="--head: scale or filter")] = None,
    gate_threshold: Annotated[float | None, typer.Option(help="--head: gates below it close")] = None,
    min_open_paths: Annotated[int | None, typer.Option(help="--head: best-gated paths kept open")] = None,
    settings: Annotated[Path | None, typer.Option(help="the head and settings 'sparsa kg tune' chose "
                                                       "(its --out JSON); --head and the flags above "
                                                       "override")] = None,
    max_paths: Annotated[int, typer.Option(min=1, help="relation paths retrieved")] = 6,
    batch_size: Annotated[int, typer.Option(min=1, help="questions generated together")] = 8,
    cache: Annotated[Path | None, typer.Option(help="pickle of retrievals to reuse")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    json_out: Annotated[Path | None, typer.Option("--out", help="also write the scores here (JSON)")] = None,
) -> None:
    """Hits@1 of a question set answered from the graph (MetaQA's measure, as bench/bench_amar.py)."""
    from sparsa.kg.amar_tune import SETTING_KEYS, read_settings, record_precision
    from sparsa.kg.answer import KGReader
    from sparsa.kg.kg import load_metaqa, read_kg_questions, sample_questions

    if (data is None) == (kg is None) or (kg is None) != (qa is None):
        raise ConfigError("give --data (a MetaQA folder) or --kg FILE with --qa FILE")
    if data is not None:
        kg = data / "kb_reconstructed.txt.gz"
        questions = [q for h in hops or [1, 2] for q in load_metaqa(data, h, split, limit=limit, seed=seed)]
    else:
        questions = sample_questions(read_kg_questions(qa, "q"), limit, seed)
    chosen, head_settings = read_settings(settings) if settings is not None else (None, {})
    head = head if head is not None or chosen is None else Path(chosen)
    flags = {"gate_mode": gate_mode, "gate_threshold": gate_threshold, "min_open_paths": min_open_paths}
    head_settings |= {key: value for key, value in flags.items() if value is not None}
    record_precision(device)
    reader = KGReader(kg, head=head, model=model, mode=mode, max_paths=max_paths, device=device,
                      **head_settings)
    scores = reader.evaluate(questions, batch_size=batch_size, cache=cache)
    if head is not None:
        scores["head"] = str(head)
    if scores["mode"] == "amar":  # the gate settings it read with
        scores["settings"] = {key: getattr(reader.reader.config, key) for key in SETTING_KEYS}
    out.print(json.dumps(scores))
    if json_out is not None:
        json_out.write_text(json.dumps(scores, indent=1) + "\n")


@app.command("tune")
def tune(
    head: Annotated[list[Path], typer.Option(help="trained Amar head (sparsa train amar); repeat to "
                                                  "choose among several")],
    data: Annotated[Path | None, typer.Option(help="MetaQA folder, as given to 'sparsa train amar'")]
    = None,
    kg: Annotated[Path | None, typer.Option(help="or a triples file (with --qa)")] = None,
    qa: Annotated[Path | None, typer.Option(help="with --kg: the question file the head trained on")] = None,
    hops: Annotated[list[int], typer.Option(help="--data: question sets")] = [1, 2],  # noqa: B006
    split: Annotated[str, typer.Option(help="--data: never test")] = "dev",
    questions: Annotated[int, typer.Option(help="the head's --questions (the draw to hold out from)")]
    = 1000,
    val_questions: Annotated[int, typer.Option(min=1, help="the head's --val-questions: the held-out "
                                                           "questions scored here")] = 250,
    seed: Annotated[int, typer.Option(help="the head's --seed")] = 0,
    grid: Annotated[Path | None, typer.Option(help="JSON list of settings objects (gate_mode, "
                                                   "gate_threshold, min_open_paths); default the "
                                                   "record's four")] = None,
    earlier: Annotated[Path | None, typer.Option("--from", help="an earlier tune's --out: its candidates "
                                                                "join the choice and, without --grid, "
                                                                "the heads here are scored under its "
                                                                "chosen settings only")] = None,
    max_paths: Annotated[int, typer.Option(min=1, help="relation paths retrieved")] = 6,
    batch_size: Annotated[int, typer.Option(min=1, help="questions generated together")] = 8,
    cache: Annotated[Path | None, typer.Option(help="pickle of retrievals to reuse")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    json_out: Annotated[Path | None, typer.Option("--out", help="write the choice and every candidate "
                                                                "here (JSON, for kg eval --settings)")]
    = None,
) -> None:
    """Choose a head's inference settings on held-out dev questions, as bench/bench_amar.py chose the
    record's: every setting of the grid scored (Hits@1 per question set), the best mean wins."""
    from sparsa.kg.amar_tune import (
        GRID,
        check_held_out,
        question_sets,
        read_grid,
        read_record,
        record_precision,
    )
    from sparsa.kg.amar_tune import tune as tune_heads
    from sparsa.kg.kg import KGRetriever, KnowledgeGraph, retrieve_cached

    sets = question_sets(data, kg, qa, hops, split, questions, val_questions, seed)
    for folder in head:
        check_held_out(folder, sets.draw)
    previous = read_record(earlier) if earlier is not None else None
    settings_grid = read_grid(grid) if grid is not None else list(GRID)
    if previous is not None and grid is None:  # the record scored its stage-2 head under stage 1's choice
        settings_grid = [previous["settings"]]
    record_precision(device)
    retriever = KGRetriever(KnowledgeGraph.load(sets.graph), max_paths=max_paths)
    asked = [q for qs in sets.val.values() for q in qs]
    retrievals = iter(retrieve_cached(retriever, asked, cache))
    scored = {name: (qs, [next(retrievals) for _ in qs]) for name, qs in sets.val.items()}
    record = tune_heads(head, scored, settings_grid, device=device, batch_size=batch_size, earlier=previous)
    out.print(json.dumps({key: record[key] for key in ("chosen", "head", "settings", "val")}))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(record, indent=1) + "\n")

