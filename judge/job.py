"""Resumable judging jobs: which pairs to judge, an append-only checkpoint, atomic final files.

The checkpoint is a JSONL file: a header line with the judge's fingerprint (model, prompt,
scorers), then one record per judged pair, keyed by ``(qid, docid)``, appended and flushed batch by
batch. A rerun reads it, skips the pairs already there and appends the rest, so a killed job loses
at most the batch in flight (a half-written last line is dropped). A checkpoint written with a
different model or prompt is refused rather than mixed in. Final qrels and the audit JSONL are
written to a temporary sibling and renamed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from sparsa.data.trec import numbered_lines
from sparsa.errors import ConfigError, DataFormatError
from sparsa.judge.calibration import CalibratorModel
from sparsa.progress import progress_bar
from sparsa.types import Corpus, Qrels, Query, Run

logger = logging.getLogger(__name__)

Pair = tuple[str, str]  # (query id, doc id)
Gains = Literal["discrete", "expected-gain"]  # what the written qrels hold (``grade_records``)
GAINS: tuple[str, ...] = get_args(Gains)


def read_pairs(path: str | Path, queries: dict[str, Query], corpus: Corpus) -> list[Pair]:
    """Pairs from ``qid docid`` lines (BEIR/TREC qrels and TREC run lines also work).

    Unknown query or document ids and malformed lines raise DataFormatError with file and line.
    """
    pairs: list[Pair] = []
    seen: set[Pair] = set()
    for number, line in numbered_lines(path):
        parts = line.split()
        if number == 1 and parts[:2] == ["query-id", "corpus-id"]:
            continue  # BEIR qrels header
        if len(parts) in (2, 3):  # pairs, or BEIR qrels 'qid docid grade'
            pair = (parts[0], parts[1])
        elif len(parts) in (4, 6):  # qrels or run lines: the doc id is the third column
            pair = (parts[0], parts[2])
        else:
            raise DataFormatError(path, "expected 'qid docid' (or a qrels/run line), "
                                        f"got {len(parts)} columns", number)
        _check_pair(pair, queries, corpus, path, number)
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    if not pairs:
        raise DataFormatError(path, "no pairs in file")
    return pairs


def _check_pair(pair: Pair, queries: dict[str, Query], corpus: Corpus, path: str | Path, number: int) -> None:
    if pair[0] not in queries:
        raise DataFormatError(path, f"query {pair[0]!r} is not in the dataset's queries", number)
    if pair[1] not in corpus:
        raise DataFormatError(path, f"document {pair[1]!r} is not in the dataset's corpus", number)


def run_pairs(path: str | Path, queries: dict[str, Query], corpus: Corpus, depth: int) -> list[Pair]:
    """The top ``depth`` hits of each query of a TREC run file, checked like :func:`read_pairs`."""
    from sparsa.data import read_run

    run = read_run(path)
    pairs = [(qid, hit.doc_id) for qid in run for hit in run[qid][:depth]]
    for number, line in numbered_lines(path):  # report the first bad line, if any
        parts = line.split()
        _check_pair((parts[0], parts[2]), queries, corpus, path, number)
    return pairs


def top_k_union(runs: Iterable[Run], k: int) -> list[Pair]:
    """Every (qid, docid) in the top ``k`` of any of ``runs``, in first-seen order."""
    pairs: dict[Pair, None] = {}
    for run in runs:
        for qid in run:
            for hit in run[qid][:k]:
                pairs.setdefault((qid, hit.doc_id), None)
    return list(pairs)


def read_checkpoint(path: str | Path, fingerprint: dict | None = None) -> dict[Pair, dict]:
    """Records of a checkpoint by (qid, docid); a torn last line is dropped, a bad earlier one is an error."""
    path = Path(path)
    if not path.is_file():
        return {}
    lines = path.read_bytes().split(b"\n")
    records: dict[Pair, dict] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            if number == len(lines):  # the job died while writing this line
                logger.warning("%s: dropping a half-written last line", path)
                continue
            raise DataFormatError(path, "invalid JSON in the checkpoint", number) from None
        if number == 1:
            if "header" not in record:
                raise DataFormatError(path, "not a judge checkpoint (no header line)", 1)
            if fingerprint is not None and record["header"] != fingerprint:
                changed = sorted(k for k in set(fingerprint) | set(record["header"])
                                 if fingerprint.get(k) != record["header"].get(k))
                raise ConfigError(f"{path} was written by a different judge (differs in "
                                  f"{', '.join(changed)}); use another --checkpoint or delete it")
            continue
        try:
            records[(record["qid"], record["docid"])] = record
        except (KeyError, TypeError):
            raise DataFormatError(path, "checkpoint record without qid/docid", number) from None
    return records


def _append(path: Path, lines: Sequence[dict]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _truncate_torn_line(path: Path) -> None:
    """Cut a half-written last line so appended records start on a fresh line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def judge_with_checkpoint(judge, pairs: Sequence[Pair], queries: dict[str, Query], corpus: Corpus,
                          checkpoint: str | Path, batch_pairs: int = 32, show_progress: bool | None = None,
                          stop_after: int | None = None,
                          on_batch: Callable[[int], None] | None = None) -> dict[Pair, dict]:
    """Judge ``pairs`` with ``judge`` (a :class:`RelevanceJudge`), resuming from ``checkpoint``.

    Returns the records of all ``pairs``. ``stop_after`` (batches) ends early, for tests and for
    splitting a job; ``on_batch`` is called with the number of pairs done after each batch.
    """
    checkpoint = Path(checkpoint)
    fingerprint = judge.config.fingerprint()
    done = read_checkpoint(checkpoint, fingerprint)
    if checkpoint.is_file():
        _truncate_torn_line(checkpoint)
    else:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        _append(checkpoint, [{"header": fingerprint}])
    todo = [p for p in dict.fromkeys(pairs) if p not in done]
    if done:
        logger.info("checkpoint %s: %d pairs done, %d to go", checkpoint, len(pairs) - len(todo), len(todo))
    with progress_bar(len(todo), "judging", unit="pair", show=show_progress) as bar:
        for number, start in enumerate(range(0, len(todo), batch_pairs)):
            if stop_after is not None and number >= stop_after:
                break
            chunk = todo[start : start + batch_pairs]
            items = [(queries[q], corpus[d]) for q, d in chunk]
            scores = judge.score_pairs(items)
            lines = [{"qid": q, "docid": d, **s, "prompts": judge.prompts(*item)}
                     for (q, d), s, item in zip(chunk, scores, items, strict=True)]
            _append(checkpoint, lines)
            done.update({(r["qid"], r["docid"]): r for r in lines})
            bar.update(len(chunk))
            if on_batch is not None:
                on_batch(start + len(chunk))
    return {p: done[p] for p in pairs if p in done}


def write_outputs(records: dict[Pair, dict], grades: dict[Pair, int], qrels_out: str | Path,
                  audit_out: str | Path, value_name: str = "grade") -> None:
    """TREC qrels of ``grades`` and the audit JSONL (raw scores, prompt, and the qrels value under
    ``value_name``: "grade", or "gain" for expected-gain qrels), each written atomically."""
    from sparsa.data.trec import write_jsonl, write_qrels

    judged: dict[str, dict[str, int]] = {}
    for (qid, docid), grade in grades.items():
        judged.setdefault(qid, {})[docid] = int(grade)
    write_qrels(Qrels(judged), qrels_out)
    write_jsonl(({**records[pair], value_name: int(grade)} for pair, grade in grades.items()), audit_out)


def fit_split(qids: Sequence[str], fit_queries: int) -> tuple[list[str], list[str]]:
    """The fixed split: the first ``fit_queries`` query ids in sorted order fit, the rest are held out."""
    ordered = sorted(set(qids))
    if not 0 < fit_queries < len(ordered):
        raise ConfigError(f"--fit-queries must be between 1 and {len(ordered) - 1} (there are {len(ordered)} "
                          f"queries), got {fit_queries}")
    return ordered[:fit_queries], ordered[fit_queries:]


def grade_records(records: dict[Pair, dict], calibration: str | Path | None = None, fit_queries: int = 0,
                  human: Qrels | None = None, save_calibration: str | Path | None = None,
                  model: CalibratorModel = "least-squares", gains: Gains = "discrete") -> dict[Pair, int]:
    """Qrels values for judged pairs from a saved calibration, one fitted (``model``) on the first
    ``fit_queries`` queries (with ``human`` labels), or else the judge's own UMBRELA label distribution.

    ``gains`` "discrete": grades 0-3 (the calibration's, else the most probable label); "expected-gain":
    ``round(100 * expected grade)`` (the calibration's, else UMBRELA's), for nDCG-style measures only:
    it keeps the information the thresholds drop, but binary measures would count any gain >= 1 (or 2)
    as relevant."""
    from sparsa.judge.calibration import GradeCalibrator, argmax_grades, expected_gains

    if gains not in GAINS:
        raise ConfigError(f"gains {gains!r}: expected one of {', '.join(GAINS)}")
    pairs = list(records)
    rows = [records[p] for p in pairs]
    calibrator = None
    if calibration is not None:
        calibrator = GradeCalibrator.load(calibration)
    elif fit_queries:
        if human is None:
            raise ConfigError("fitting a calibration needs human qrels in the dataset")
        fit_qids = set(fit_split([q for q, _ in pairs], fit_queries)[0])
        labelled = [i for i, (q, d) in enumerate(pairs) if q in fit_qids and d in human.get(q, {})]
        calibrator = GradeCalibrator.fit([rows[i] for i in labelled], [human[pairs[i][0]][pairs[i][1]]
                                                                       for i in labelled], model=model)
        if save_calibration is not None:
            calibrator.save(save_calibration)
    if gains == "discrete":
        values = calibrator.predict(rows) if calibrator is not None else argmax_grades(rows)
    elif calibrator is not None:
        values = expected_gains(calibrator.expected_grades(rows))
    elif all("expected_grade" in r for r in rows):
        values = expected_gains(np.array([r["expected_grade"] for r in rows]))
    else:
        raise ConfigError("uncalibrated expected gains need the UMBRELA scorer's expected_grade; "
                          "pass a calibration or fit one")
    return dict(zip(pairs, values.tolist(), strict=True))


def run_judge_job(dataset: str | Path, out: str | Path, pairs_file: str | Path | None = None,
                  run_file: str | Path | None = None, depth: int = 10, config=None,
                  calibration: str | Path | None = None, fit_queries: int = 0,
                  checkpoint: str | Path | None = None,
                  audit: str | Path | None = None, batch_pairs: int = 32, split: str = "test",
                  show_progress: bool | None = None, calibrator: CalibratorModel = "least-squares",
                  gains: Gains = "discrete", report: str | Path | None = None,
                  human_qrels: str | Path | None = None, system_runs: Sequence[str | Path] = ()) -> dict:
    """What ``sparsa judge`` does: read pairs, judge them (resumably), grade, write qrels + audit JSONL;
    with ``report``, also the agreement with human qrels (``human_qrels``, default the dataset's) as JSON
    (:mod:`sparsa.judge.human_agreement`), ranking ``system_runs`` under both qrels."""
    from sparsa.data import load_dataset, read_run
    from sparsa.judge.judge import JudgeConfig, RelevanceJudge

    if (pairs_file is None) == (run_file is None):
        raise ConfigError("give exactly one of --pairs FILE or --run RUN")
    if calibration is not None and fit_queries:
        raise ConfigError("give --calibration or --fit-queries, not both")
    data = load_dataset(dataset, split)
    human = Qrels.read_trec(human_qrels) if human_qrels is not None else data.qrels
    if report is not None and human is None:
        raise ConfigError(f"--report needs human qrels: the dataset has none for split {split!r}; give "
                          "--human-qrels FILE")
    runs = {str(path): read_run(path) for path in system_runs}
    queries = {q.id: q for q in data.queries}
    pairs = read_pairs(pairs_file, queries, data.corpus) if pairs_file is not None else \
        run_pairs(run_file, queries, data.corpus, depth)
    out = Path(out)
    checkpoint = Path(checkpoint) if checkpoint else out.with_name(out.name + ".checkpoint.jsonl")
    audit = Path(audit) if audit else out.with_name(out.name + ".jsonl")
    judge = RelevanceJudge(config or JudgeConfig())
    records = judge_with_checkpoint(judge, pairs, queries, data.corpus, checkpoint, batch_pairs,
                                    show_progress)
    saved = out.with_name(out.name + ".calibration.json") if fit_queries else None
    grades = grade_records(records, calibration, fit_queries, human, saved, calibrator, gains)
    write_outputs(records, grades, out, audit, "gain" if gains == "expected-gain" else "grade")
    uncalibrated = "argmax of the label probabilities" if gains == "discrete" else "UMBRELA expected grade"
    summary = {"pairs": len(pairs), "qrels": str(out), "audit": str(audit), "checkpoint": str(checkpoint),
               "calibration": str(saved or calibration or uncalibrated), "gains": gains}
    if report is not None:
        from sparsa.judge.human_agreement import agreement_report, write_report

        discrete = grades if gains == "discrete" else grade_records(records, saved or calibration)
        held_out = fit_split([q for q, _ in pairs], fit_queries)[1] if fit_queries else None
        # Labels agree as 0-3 grades; systems rank under the qrels this job writes (expected gains too).
        summary["agreement"] = agreement_report(discrete, human, held_out, runs,
                                                ranking_gains=grades if gains == "expected-gain" else None)
        summary["report"] = str(write_report(summary["agreement"], report))
    return summary
