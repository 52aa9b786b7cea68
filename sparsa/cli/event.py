"""``sparsa train event``: the event-aware query encoder, on RealTime QA (earlier weeks train, later
weeks test) or on any dated dataset (``--dataset``: a BEIR folder whose corpus records carry
``metadata.date`` and whose ``queries.jsonl`` records carry ``date``; ``qrels/<split>.tsv`` name the
gold documents; see ``sparsa.retrieval.dated``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsa.cli.common import console, dataset_path


def train_event(
    out: Annotated[Path, typer.Option(help="folder for the trained encoder head (sparsa.json + head.pt)")],
    data: Annotated[str, typer.Option(help="RealTime QA folder or name under the data dir")] = "realtimeqa",
    dataset: Annotated[str | None, typer.Option(
        help="a dated dataset (BEIR folder: dated corpus, queries with a date, qrels) instead of "
             "RealTime QA")] = None,
    train_split: Annotated[str, typer.Option(help="--dataset: qrels split to train on")] = "train",
    test_split: Annotated[str | None, typer.Option(help="--dataset: qrels split to score ('none': "
                                                        "no test)")] = "test",
    last_train_week: Annotated[str,
                               typer.Option(help="last weekly file (YYYYMMDD) to train on")] = "20220930",
    events: Annotated[bool, typer.Option(help="attend to recent events (--no-events: the ablation)")] = True,
    window_days: Annotated[int, typer.Option(help="events from this many days before the question")] = 14,
    max_events: Annotated[int, typer.Option(help="events kept per question (most similar)")] = 16,
    heads: Annotated[int, typer.Option()] = 1,
    event_source: Annotated[str, typer.Option(help="documents or headlines")] = "documents",
    epochs: Annotated[int, typer.Option()] = 10,
    lr: Annotated[float, typer.Option()] = 3e-4,
    plain_loss_weight: Annotated[float, typer.Option(help="multi-task weight of the no-event loss")] = 0.5,
    seed: Annotated[int, typer.Option()] = 0,
    cache: Annotated[Path | None, typer.Option(help="folder caching the frozen embeddings")] = None,
) -> None:
    """Train the cross-attention head over a frozen minilm-l6; print recall@5 / MRR@10 on later weeks."""
    from sparsa.config import load_settings
    from sparsa.retrieval.event_encoder import EventEncoderConfig
    from sparsa.retrieval.event_train import EventTrainConfig, train_realtimeqa

    encoder = EventEncoderConfig(use_events=events, window_days=window_days,
                                 max_events=max_events, heads=heads)
    config = EventTrainConfig(encoder=encoder, epochs=epochs, lr=lr,
                              plain_loss_weight=plain_loss_weight, seed=seed)
    cache = cache or load_settings().home / "cache" / "event"
    if dataset is not None:
        from sparsa.retrieval.event_train import train_dated

        test = None if test_split in (None, "none") else test_split
        folder, record = train_dated(dataset_path(dataset), out, config, train_split, test, cache,
                                     event_source)
        trained = f"{train_split} split"
    else:
        folder, record = train_realtimeqa(dataset_path(data), out, config, last_train_week, cache,
                                          event_source)
        trained = f"weeks <= {last_train_week}"
    console.print(f"trained on {record['examples']} questions ({trained})" + (
        f"; {record['test_questions']} test questions: recall@5 {record['test']['R@5']:.3f}, "
        f"MRR@10 {record['test']['MRR@10']:.3f}" if "test" in record else ""))
    console.print(f"saved {folder}")


def dated_dataset(
    out: Annotated[Path, typer.Option(help="new folder for the dated dataset (BEIR layout)")],
    data: Annotated[str, typer.Option(help="RealTime QA folder or name under the data dir")] = "realtimeqa",
    last_train_week: Annotated[str, typer.Option(
        help="qrels/train.tsv: weekly files (YYYYMMDD) up to this one; qrels/test.tsv: the later ones")]
    = "20220930",
    last_test_date: Annotated[str, typer.Option(help="last question day of the test split "
                                                     "(YYYY-MM-DD)")] = "2023-12-31",
) -> None:
    """Write RealTime QA as a dated dataset: the pool, questions and weekly split of `sparsa train event`
    and bench/bench_event.py, for `sparsa index`, `search --as-of / --window-days / --event-encoder`
    and `eval`."""
    from sparsa.cli.retrieval import parse_day
    from sparsa.data.realtimeqa import load_realtimeqa, write_dated_dataset

    counts = write_dated_dataset(load_realtimeqa(dataset_path(data)), out, last_train_week,
                                 parse_day(last_test_date, "--last-test-date"))
    console.print(f"wrote {counts['documents']} dated documents and {counts['queries']} questions "
                  f"({counts['train_queries']} train, {counts['test_queries']} test) to {out}")
