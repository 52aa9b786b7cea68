"""'sparsa judge ... --report' against human qrels, with every JudgeConfig field as a flag: real TREC DL
2019 queries and judged passages (6 queries x 4 passages of mixed grades), the real SmolLM2 judge, and
three system runs over those passages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparsa.cli.main import main

DL19 = "trec-dl-2019-passage"


@pytest.fixture(scope="module")
def dl19_slice(shared_data, tmp_path_factory):
    """(dataset folder, human qrels {qid: {docid: grade}}, three system run files)."""
    from sparsa.data import load_dataset

    data = load_dataset(shared_data / DL19)
    folder = tmp_path_factory.mktemp("dl19") / "dl19-slice"
    (folder / "qrels").mkdir(parents=True)
    human: dict[str, dict[str, int]] = {}
    for q in sorted(data.queries, key=lambda q: q.id):
        by_grade = {}
        for doc, grade in sorted(data.qrels[q.id].items()):
            by_grade.setdefault(grade, doc)
        if len(by_grade) == 4:  # one passage of each grade 0-3
            human[q.id] = {doc: grade for grade, doc in by_grade.items()}
        if len(human) == 6:
            break
    queries = [q for q in data.queries if q.id in human]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q, docs in sorted(human.items()) for d, g in sorted(docs.items())))
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"_id": q.id, "text": q.text}) + "\n" for q in queries))
    docs = sorted({d for judged in human.values() for d in judged})
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": d, "text": data.corpus[d].text}) + "\n" for d in docs))
    orders = {"by-grade": lambda judged: sorted(judged, key=lambda d: -judged[d]),
              "reversed": lambda judged: sorted(judged, key=lambda d: judged[d]),
              "by-id": lambda judged: sorted(judged)}
    runs = []
    for name, order in orders.items():
        path = folder / f"{name}.trec"
        path.write_text("".join(f"{q} Q0 {d} {r} {10 - r} {name}\n" for q, judged in sorted(human.items())
                                for r, d in enumerate(order(judged), 1)))
        runs.append(path)
    return folder, human, runs


def test_judge_report_against_human_qrels(dl19_slice, tmp_path, capsys):
    from sparsa.eval import evaluate_run
    from sparsa.eval.agreement import binarize, cohen_kappa, kendall_tau
    from sparsa.types import Qrels, Run

    folder, human, runs = dl19_slice
    out, report = tmp_path / "judged.qrels", tmp_path / "agreement.json"
    argv = ["-q", "judge", "--pairs", str(folder / "qrels" / "test.tsv"), "--dataset", str(folder), "--out",
            str(out), "--scorers", "ql", "--ql-prompts", "question,query", "--max-passage-tokens", "96",
            "--max-tokens-per-batch", "1024", "--device", "cpu", "--dtype", "float32", "--fit-queries", "2",
            "--report", str(report)]
    assert main([*argv, *(x for run in runs for x in ("--system-run", str(run)))]) == 0
    err = capsys.readouterr().err
    assert "held_out: 16 pairs, kappa 4-grade" in err and "Kendall tau" in err
    written = json.loads(report.read_text())
    audit = [json.loads(line) for line in (tmp_path / "judged.qrels.jsonl").read_text().splitlines()]
    assert all(len(r["ql_logprobs"]) == 2 for r in audit)  # both --ql-prompts scored every pair
    generated = Qrels.read_trec(out)
    held_out = sorted(human)[2:]
    pairs = [(q, d) for q in held_out for d in sorted(human[q])]
    truth = [human[q][d] for q, d in pairs]
    grades = [generated[q][d] for q, d in pairs]
    labels = written["held_out"]["labels"]
    assert written["held_out"]["pairs_with_human_grade"] == 16
    assert written["all"]["pairs_with_human_grade"] == 24
    assert labels["cohen_kappa_4grade"] == round(cohen_kappa(truth, grades), 4)
    assert labels["cohen_kappa_binary"] == round(cohen_kappa(binarize(truth), binarize(grades), (0, 1)), 4)
    assert "krippendorff_alpha_ordinal" in labels
    assert len(labels["cohen_kappa_4grade_95ci_query_bootstrap"]) == 2
    # the system ranking: mean nDCG@10 over the held-out queries under both qrels, then Kendall's tau
    human_qrels = Qrels({q: dict(d) for q, d in human.items()})
    means = {side: [np.mean([evaluate_run(Run.read_trec(run), qrels, ["nDCG@10"]).per_query[q]["nDCG@10"]
                             for q in held_out]) for run in sorted(runs, key=str)]
             for side, qrels in (("human", human_qrels), ("generated", generated))}
    ranking = written["held_out"]["system_ranking"]
    assert ranking["kendall_tau"] == round(kendall_tau(means["human"], means["generated"]), 4)
    assert ranking["runs"][str(runs[0])]["human"] == 1.0  # the run ordered by human grade is perfect


def test_judge_flag_errors(dl19_slice, tmp_path, capsys):
    folder, _, runs = dl19_slice
    base = ["-q", "judge", "--pairs", str(folder / "qrels" / "test.tsv"), "--dataset", str(folder), "--out",
            str(tmp_path / "q.qrels")]
    cases = [([*base, "--ql-prompts", "question,riddle"], "ql_prompts"),
             ([*base, "--system-run", str(runs[0])], "go with --report FILE"),
             ([*base, "--report", str(tmp_path / "r.json"), "--human-qrels", str(tmp_path / "none.qrels")],
              "none.qrels")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize(("scorers", "extra", "features"), [
    ("pl", ["--calibrator", "ordinal-logit"], ["pl_pmi", "pl_pmi_z", "pl_pmi_mean", "pl_pmi_mean_z"]),
    ("umbrela", ["--gains", "expected-gain"], ["expected_grade", "p3", "expected_grade_z"])])
def test_judge_published_settings_from_the_cli(dl19_slice, tmp_path, capsys, scorers, extra, features):
    """The published tau settings as flags (docs/results.md): SmolLM2's pl-pmi/ordinal-logit (--scorers pl
    --calibrator ordinal-logit) and Qwen's umbrela over expected-gain qrels: the calibration is fitted on
    exactly that setting's features, and the report ranks the systems."""
    from sparsa.types import Qrels

    folder, _, runs = dl19_slice
    out, report = tmp_path / "judged.qrels", tmp_path / "agreement.json"
    argv = ["-q", "judge", "--pairs", str(folder / "qrels" / "test.tsv"), "--dataset", str(folder), "--out",
            str(out), "--scorers", scorers, "--max-passage-tokens", "96", "--device", "cpu", "--fit-queries",
            "2", *extra, "--report", str(report), *(x for run in runs for x in ("--system-run", str(run)))]
    assert main(argv) == 0
    calibration = json.loads((tmp_path / "judged.qrels.calibration.json").read_text())
    assert calibration["features"] == features
    assert calibration["model"] == ("ordinal-logit" if "ordinal-logit" in extra else "least-squares")
    gains = [g for docs in Qrels.read_trec(out).judgements.values() for g in docs.values()]
    assert len(gains) == 24
    if "expected-gain" in extra:
        assert all(0 <= g <= 300 for g in gains) and len(set(gains)) > 4  # round(100 * expected grade)
    else:
        assert set(gains) <= {0, 1, 2, 3}
    ranking = json.loads(report.read_text())["held_out"]["system_ranking"]
    assert -1.0 <= ranking["kendall_tau"] <= 1.0 and len(ranking["runs"]) == 3
