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
    max_paths: Annotated[int, typer.Option(min=1, help="relation paths retrieved")] = 6,
    batch_size: Annotated[int, typer.Option(min=1, help="questions generated together")] = 8,
    cache: Annotated[Path | None, typer.Option(help="pickle of retrievals to reuse")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    json_out: Annotated[Path | None, typer.Option("--out", help="also write the scores here (JSON)")] = None,
) -> None:
    """Hits@1 of a question set answered from the graph (MetaQA's measure, as bench/bench_amar.py)."""
    from sparsa.kg.answer import KGReader
    from sparsa.kg.kg import load_metaqa, read_kg_questions, sample_questions

    if (data is None) == (kg is None) or (kg is None) != (qa is None):
        raise ConfigError("give --data (a MetaQA folder) or --kg FILE with --qa FILE")
    if data is not None:
        kg = data / "kb_reconstructed.txt.gz"
        questions = [q for h in hops or [1, 2] for q in load_metaqa(data, h, split, limit=limit, seed=seed)]
    else:
        questions = sample_questions(read_kg_questions(qa, "q"), limit, seed)
    settings = {key: value for key, value in (("gate_mode", gate_mode), ("gate_threshold", gate_threshold),
                                              ("min_open_paths", min_open_paths)) if value is not None}
    reader = KGReader(kg, head=head, model=model, mode=mode, max_paths=max_paths, device=device, **settings)
    scores = reader.evaluate(questions, batch_size=batch_size, cache=cache)
    out.print(json.dumps(scores))
    if json_out is not None:
        json_out.write_text(json.dumps(scores, indent=1) + "\n")
