"""``sparsa judge``: graded 0-3 relevance judgements from a local LM, written as TREC qrels.

    sparsa judge --run bm25.trec --depth 10 --dataset trec-dl-2019-passage --out judged.qrels --fit-queries 21
    sparsa judge --pairs pairs.tsv --dataset DIR --model smollm2-135m-instruct --out judged.qrels \
        --calibration cal.json
    sparsa judge --run bm25.trec --dataset trec-dl-2019-passage --out gains.qrels --fit-queries 21 \
        --gains expected-gain
    sparsa judge --run bm25.trec --dataset trec-dl-2019-passage --out judged.qrels --fit-queries 21 \
        --scorers ql --ql-prompts question,query,plain,chat --report agreement.json \
        --system-run bm25.trec --system-run splade.trec --system-run dense.trec

Calls :func:`sparsa.judge.job.run_judge_job`. Beside ``--out`` it writes ``OUT.jsonl`` (raw
scores, prompt and grade per pair, for audit) and keeps ``OUT.checkpoint.jsonl``: rerunning the
same command after an interruption continues where it stopped. ``--report FILE`` adds the agreement
with human qrels (:mod:`sparsa.judge.human_agreement`). Every :class:`JudgeConfig` field is a flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sparsa.cli.common import console, dataset_path
from sparsa.errors import ConfigError
from sparsa.judge.calibration import CalibratorModel
from sparsa.judge.job import Gains
from sparsa.judge.judge import QL_PROMPTS


def judge(
    dataset: Annotated[str,
                       typer.Option(help="dataset folder or name under the data dir: queries and passages")],
    out: Annotated[Path, typer.Option("--out", help="write the generated qrels here (TREC format)")],
    pairs: Annotated[Path | None,
                     typer.Option(help="pairs to judge: 'qid docid' lines (or TREC qrels/run lines)")]
    = None,
    run: Annotated[Path | None, typer.Option(help="judge the top --depth hits of this TREC run")] = None,
    depth: Annotated[int, typer.Option(min=1, max=10_000, help="with --run: hits per query to judge")] = 10,
    model: Annotated[str,
                     typer.Option(help="causal LM: registry name or local folder")] = "smollm2-135m-instruct",
    scorers: Annotated[str, typer.Option(help="comma-separated: umbrela (label probabilities), ql (query "
                                              "likelihood), pl (passage likelihood)")] = "umbrela,ql",
    calibration: Annotated[Path | None,
                           typer.Option(help="grade calibration JSON from an earlier --fit-queries")]
    = None,
    fit_queries: Annotated[int, typer.Option(min=0, help="fit the calibration on the first N query ids "
                                                         "(sorted) with the dataset's qrels; saved as "
                                                         "OUT.calibration.json")]
    = 0,
    checkpoint: Annotated[Path | None,
                          typer.Option(help="resumable checkpoint (default OUT.checkpoint.jsonl)")]
    = None,
    batch_pairs: Annotated[int, typer.Option(min=1, help="pairs per checkpointed batch")] = 32,
    max_passage_tokens: Annotated[int, typer.Option(min=1, help="cut passages to this many tokens")] = 256,
    split: Annotated[str, typer.Option(help="qrels split (for --fit-queries)")] = "test",
    calibrator: Annotated[CalibratorModel, typer.Option(
        help="with --fit-queries: how the score is fitted, least squares on the grades "
             "or a proportional-odds (ordinal logistic) model; either is cut by "
             "kappa-maximising thresholds")] = "least-squares",
    gains: Annotated[Gains, typer.Option(
        help="qrels values: grades 0-3, or round(100 * expected grade) for nDCG-style measures (nDCG's "
             "linear gain ignores the scale; binary measures such as AP or RR would call every gain > 0 "
             "relevant)")] = "discrete",
    ql_prompts: Annotated[str, typer.Option(
        help=f"ql scorer prompts, comma-separated ({', '.join(QL_PROMPTS)}); the first gives ql_logprob, all "
             "of them the ql_pmi_ens features (the published best setting: all four)")] = "question",
    max_tokens_per_batch: Annotated[int, typer.Option(min=1, help="tokens scored per LM batch")] = 4096,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto")] = "float32",
    report: Annotated[Path | None, typer.Option(
        help="write the agreement with human qrels here (JSON): Cohen's kappa 4-grade and binary (0-1 vs "
             "2-3), Krippendorff's alpha, and with --system-run Kendall's tau of the system ranking; on the "
             "held-out queries when --fit-queries")] = None,
    human_qrels: Annotated[Path | None, typer.Option(help="with --report: human qrels (default: the "
                                                          "dataset's, --split)")] = None,
    system_run: Annotated[list[Path] | None, typer.Option(
        help="with --report: a system's TREC run (give two or more) ranked by nDCG@10 under both qrels")]
    = None,
) -> None:
    """Judge (query, passage) pairs on the 0-3 TREC DL scale; without a calibration the grade is the
    most probable label."""
    from sparsa.config import resolve_device
    from sparsa.judge.human_agreement import summary_lines
    from sparsa.judge.job import run_judge_job
    from sparsa.judge.judge import JudgeConfig

    if (human_qrels is not None or system_run) and report is None:
        raise ConfigError("--human-qrels and --system-run go with --report FILE")
    config = JudgeConfig(model=model, scorers=_names(scorers), max_passage_tokens=max_passage_tokens,
                         max_tokens_per_batch=max_tokens_per_batch, device=resolve_device(device),
                         dtype=dtype, ql_prompts=_names(ql_prompts))
    summary = run_judge_job(dataset_path(dataset), out, pairs, run, depth, config, calibration, fit_queries,
                            checkpoint, batch_pairs=batch_pairs, split=split, calibrator=calibrator,
                            gains=gains, report=report, human_qrels=human_qrels, system_runs=system_run or ())
    console.print(f"judged {summary['pairs']} pairs; wrote {summary['qrels']} and {summary['audit']} "
                  f"({summary['gains']} from {summary['calibration']})")
    if report is not None:
        for line in summary_lines(summary["agreement"]):
            console.print(line)
        console.print(f"wrote the agreement report {summary['report']}")


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())
