"""``sparsa train router``: fit the retrieve-or-recall router on a labelled question set.

    sparsa train router --questions qa.jsonl --index scifact-bm25 --dataset scifact --out router.json
    sparsa ask "..." --index scifact-bm25 --dataset scifact --router router.json --mode auto

Where the index's backend cannot run (Lucene needs Java), search the questions first and fit from the runs:

    sparsa search --index scifact-bm25 --queries qa.jsonl --k 10 --out qa.trec
    sparsa train router --questions qa.jsonl --run qa.trec --index scifact-bm25 --dataset scifact ...

``--questions`` is JSONL, one ``{"question": ..., "answers": [...]}`` a line (optional ``id``,
``source``). Each question is answered closed-book and from the index's top ``--k`` passages by the
reader ``ask`` uses; the router learns from the difference in F1 which questions retrieval helps
(:mod:`sparsa.rag.routing`), over the question's corpus statistics, the reader's closed-book
confidence and the retriever's score distribution. ``--cache`` keeps the answers: a rerun resumes.
With ``--run`` (and ``--test-run`` for ``--test-questions``) each question's passages and scores come from
a TREC run keyed by question id (``sparsa search --queries`` on the questions file keys it so); ``--index``
then names the index the run was searched on: not opened, its manifest checks ``--dataset`` and the router
records it. Without it the router records only the run: ``sparsa ask --index`` must name that index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sparsa.cli.common import console
from sparsa.errors import ConfigError


def train_router_command(
    questions: Annotated[Path, typer.Option(help="labelled questions: JSONL, {question, answers} a line")],
    dataset: Annotated[str, typer.Option(help="dataset folder or corpus file the index was built from")],
    out: Annotated[Path, typer.Option(help="the router file (for sparsa ask --router)")],
    index: Annotated[str | None, typer.Option(
        help="index folder or name the router will route to: searched for each question's passages; with "
             "--run, the index the run was searched on (not opened: its manifest checks --dataset, the "
             "router records it for sparsa ask)")] = None,
    run_file: Annotated[Path | None, typer.Option(
        "--run", help="TREC run of --questions keyed by question id ('sparsa search --queries QUESTIONS --k "
                      "10'): the passages and retriever scores, instead of searching --index")] = None,
    test_run_file: Annotated[Path | None, typer.Option(
        "--test-run", help="with --run: the TREC run of --test-questions")] = None,
    missing_as_empty: Annotated[bool, typer.Option(
        help="with --run: a question the run lacks is one the retriever found nothing for (a TREC run has no "
             "line for it), not an error")] = False,
    features: Annotated[str, typer.Option(
        help="auto (fit every feature set, keep the best on these questions), a set name (popularity, "
             "confidence, retrieval, popularity+retrieval, all, ...), several comma-separated set names (the "
             "best of those) or comma-separated features")] = "auto",
    test_questions: Annotated[Path | None, typer.Option(help="held-out labelled questions to report on")]
    = None,
    k: Annotated[int, typer.Option(min=1, max=100, help="passages the reader gets when retrieving")] = 5,
    model: Annotated[str | None, typer.Option(help="reader LM (default: ask's)")] = None,
    device: Annotated[str | None, typer.Option(help="reader device: auto, cpu, cuda")] = None,
    dtype: Annotated[str | None, typer.Option(help="reader dtype: auto, float32, bfloat16")] = None,
    max_context_tokens: Annotated[int | None, typer.Option(min=16, help="token budget of all passages")]
    = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, max=1024, help="longest answer in tokens")]
    = None,
    max_passage_tokens: Annotated[int | None, typer.Option(min=8, help="tokens kept of each passage")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="prompts generated together")] = 8,
    cache: Annotated[Path | None, typer.Option(help="answer cache (JSONL): a rerun generates what it lacks")]
    = None,
    rows: Annotated[Path | None, typer.Option(help="also write every question's features and answers (JSON)")]
    = None,
) -> None:
    """Answer each question both ways, fit the router on the F1 difference, save it."""
    from sparsa.artifacts import read_manifest
    from sparsa.config import index_path
    from sparsa.docstore import check_source, open_documents
    from sparsa.models import resolve_model
    from sparsa.rag.config import ReaderConfig
    from sparsa.rag.qa_sets import AnswerCache, read_labelled_questions
    from sparsa.rag.reader import Reader
    from sparsa.rag.routing import (
        FEATURE_SETS,
        FEATURES,
        RETRIEVAL_FEATURES,
        Router,
        TermStats,
        routing_rows,
        train_router,
    )
    from sparsa.search import open_retriever

    if index is None and run_file is None:
        raise ConfigError("give --index (searched for each question) or --run (a TREC run of the questions: "
                          "sparsa search --queries QUESTIONS --k 10 --out RUN)")
    if run_file is None and test_run_file is not None:
        raise ConfigError("--test-run goes with --run (and --test-questions)")
    if run_file is not None and (test_questions is None) != (test_run_file is None):
        raise ConfigError("with --run, --test-questions and --test-run go together (each file's run keyed "
                          "by its question ids)")
    feature_sets = _feature_sets(features, FEATURE_SETS, FEATURES)
    asked = read_labelled_questions(questions)
    held_out = read_labelled_questions(test_questions) if test_questions is not None else []
    runs = _question_runs([(run_file, questions, asked), (test_run_file, test_questions, held_out)], k,
                          missing_as_empty) if run_file is not None else None
    retriever = open_retriever(index) if runs is None else None
    corpus = open_documents(dataset)  # a large corpus: its store, not memory
    if index is not None:  # the corpus the index (searched, or the one the run came from) was built on
        check_source(corpus, read_manifest(index_path(index), verify="none"), index_path(index))
    settings = {"model": model, "device": device, "dtype": dtype, "max_context_tokens": max_context_tokens,
                "max_new_tokens": max_new_tokens, "max_passage_tokens": max_passage_tokens}
    config = ReaderConfig(**{key: value for key, value in settings.items() if value is not None})
    reader = Reader(config)
    answers = AnswerCache(cache, resolve_model(config.model), config) if cache is not None else None
    stats = TermStats.from_corpus(corpus)
    console.print(f"answering {len(asked) + len(held_out)} questions closed-book and from the top {k} "
                  "passages")
    fit_rows = routing_rows(asked, runs[0] if runs else retriever, corpus, reader, k, batch_size, stats,
                            answers)
    test_rows = routing_rows(held_out, runs[1] if runs else retriever, corpus, reader, k, batch_size, stats,
                             answers) if held_out else []
    info = {"questions_file": str(questions), "index": str(index_path(index)) if index is not None else None,
            "dataset": str(dataset), "reader": config.model, "k": k}
    if run_file is not None:
        info["run"] = str(run_file)
    router, report = train_router(fit_rows, feature_sets, test_rows, info)
    out.parent.mkdir(parents=True, exist_ok=True)
    Router(router, stats).save(out)
    for part in ("fit", "test"):
        if part in report:
            _print_table(report[part], f"{part}: {report[part]['always-retrieve']['questions']} questions")
    if "versus_best_fixed" in report:
        versus = report["versus_best_fixed"]
        f1, em = versus["f1"], versus["em"]
        console.print(f"test: router '{report['chosen']}' - {versus['best_fixed']}, F1 {f1['diff']:+.4f} "
                      f"(95% CI {f1['ci95']}), EM {em['diff']:+.4f} ({em['ci95']}), paired bootstrap over "
                      "questions")
    if rows is not None:
        rows.write_text(json.dumps({"report": report, "fit": fit_rows, "test": test_rows}, indent=1) + "\n")
    console.print(f"router '{report['chosen']}' ({', '.join(router.features)}; threshold "
                  f"{router.threshold:.3f}) saved to {out}; use it with 'sparsa ask --router {out}'")
    if index is None and set(router.features) & set(RETRIEVAL_FEATURES):
        console.print(f"note: it reads the retriever's scores and records no index (no --index with --run): "
                      f"give 'sparsa ask' the index {run_file} was searched on")


def _question_runs(pairs: list, k: int, missing_as_empty: bool) -> list:
    """Each (run file, questions file, questions) as a Run of those questions' hits, checked to hold every
    question (the file and id named if not: ``check_run_questions``), its notes printed."""
    from sparsa.rag.routing import check_run_questions
    from sparsa.types import Run

    runs = []
    for run_file, questions_file, asked in pairs:
        if run_file is None:
            runs.append(None)
            continue
        run = Run.read_trec(run_file)
        for note in check_run_questions(run, run_file, asked, questions_file, k, missing_as_empty):
            console.print(f"note: {note}")
        runs.append(run)
    return runs


def _feature_sets(spec: str, known_sets: dict, known: tuple[str, ...]) -> dict[str, tuple[str, ...]] | None:
    if spec == "auto":
        return None
    if spec in known_sets:
        return {spec: tuple(known_sets[spec])}
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    if names and all(name in known_sets for name in names):  # candidate sets: the best of them is kept
        return {name: tuple(known_sets[name]) for name in names}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ConfigError(f"--features {spec!r}: expected auto, sets ({', '.join(known_sets)}) or features "
                          f"({', '.join(known)})")
    return {"custom": names}


def _print_table(table: dict, title: str) -> None:
    view = Table("policy", "EM", "F1", "retrieves", title=title)
    for name, row in table.items():
        view.add_row(name, f"{row['em']:.3f}", f"{row['f1']:.3f}", f"{row['retrievals']}/{row['questions']}")
    console.print(view)


def routing_set_command(
    out: Annotated[Path, typer.Option(help="folder for corpus.jsonl, dev.jsonl and test.jsonl")],
    data: Annotated[str | None, typer.Option(help="the shared data folder (default: the data dir)")] = None,
    per_source: Annotated[int, typer.Option(min=1, help="questions per source")] = 80,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
) -> None:
    """Write the mixed retrieve-or-recall question set of the published router (RealTime QA, TimeQA and
    MetaQA questions with their passages; PopQA and NQ-open questions without): the passages as a corpus,
    each question in its stable dev or test half, in the format 'sparsa train router' reads."""
    from sparsa.config import dataset_path, load_settings
    from sparsa.rag.qa_sets import interleave_sources, mixed_question_set

    examples, docs = mixed_question_set(dataset_path(data) if data else load_settings().data_dir, per_source,
                                        seed)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"_id": doc.id, "title": doc.title, "text": doc.text}) + "\n")
    for split in ("dev", "test"):
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for e in interleave_sources(examples):
                if e.split == split:
                    f.write(json.dumps({"id": e.id, "source": e.source, "question": e.question,
                                        "answers": list(e.answers)}) + "\n")
    console.print(f"wrote {len(docs)} passages and {len(examples)} questions (dev and test halves) to {out}")
