"""The CLI in-process through ``main(argv)``: real commands, clear errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparsa.cli.main import main
from tests.conftest import needs_java


def test_models_list_and_unknown_model(capsys):
    assert main(["models", "list"]) == 0
    assert "splade-tiny" in capsys.readouterr().err
    assert main(["models", "pull", "splade-tiyn", "--no-check"]) == 2
    assert "unknown model 'splade-tiyn'" in capsys.readouterr().err
    assert main(["models", "pull"]) == 2


def test_bad_input_is_an_error_line_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"_id": "1", "text": "ok"}\n{"_id": "2", "text": \n')
    assert main(["index", "--corpus", str(bad), "--out", str(tmp_path / "idx")]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}:2: invalid JSON" in err and "Traceback" not in err
    assert main(["eval", "--run", str(tmp_path / "missing.trec"), "--qrels", str(bad)]) == 2
    assert "missing.trec: file not found" in capsys.readouterr().err
    assert main(["search", "--index", str(tmp_path / "nothing"), "--query", "x"]) == 2
    assert "not a sparsa index" in capsys.readouterr().err
    assert main(["index", "--out", "x"]) == 2  # neither --dataset nor --corpus
    assert main(["search", "--bogus-flag"]) == 2  # usage error from the parser


def test_index_search_eval_roundtrip(tmp_path, shared_data, capsys):
    needs_java()
    index = tmp_path / "cran"
    assert main(["-q", "index", "--dataset", str(shared_data / "cranfield"), "--out", str(index)]) == 0
    run = tmp_path / "run.trec"
    assert main(["-q", "search", "--index", str(index), "--dataset", str(shared_data / "cranfield"),
                 "--k", "100", "--out", str(run)]) == 0
    assert len(run.read_text().splitlines()) == 225 * 100
    report = tmp_path / "eval.json"
    assert main(["eval", "--run", str(run), "--dataset", str(shared_data / "cranfield"), "--out",
                 str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["num_queries"] == 225 and result["aggregate"]["nDCG@10"] > 0.3
    assert len(result["per_query"]) == 225
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--query", "slipstream wing", "--k", "3"]) == 0
    assert "rank" in capsys.readouterr().err
    assert main(["search", "--index", str(index), "--query", "   "]) == 2


def test_ray_without_a_cluster_is_an_error_line(tmp_path, shared_data):
    pytest.importorskip("ray.data")
    if Path("/tmp/ray/ray_current_cluster").exists():
        pytest.skip("a Ray cluster runs on this machine: 'auto' would find it")
    out = subprocess.run([sys.executable, "-m", "sparsa", "index", "--corpus",
                          str(shared_data / "cranfield" / "corpus.jsonl"), "--kind", "splade", "--ray",
                          "--ray-address", "auto", "--out", str(tmp_path / "idx")],
                         check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "error: no Ray cluster at 'auto'" in out.stderr and "SPARSA_RAY_ADDRESS" in out.stderr
    assert "Traceback" not in out.stderr


def test_error_text_prints_literally(tmp_path, capsys):
    """Paths and messages are not Rich markup: no emoji for :100:, no lost [bold], no crash on [/]."""
    run = tmp_path / "run:100:[bold]x[/]:1234:.trec"
    assert main(["eval", "--run", str(run), "--qrels", str(run)]) == 2
    assert capsys.readouterr().err == f"error: {run}: file not found\n"


def test_each_message_prints_once(tmp_path, shared_data):
    """pyserini's import calls logging.basicConfig; sparsa's lines must not print again
    through the root logger."""
    run = tmp_path / "run.trec"
    run.write_text("1 Q0 1 1 1.0 x\n")
    argv = ["eval", "--run", str(run), "--dataset", str(shared_data / "cranfield")]
    code = f"import logging, sys\nlogging.basicConfig(format='%(asctime)s %(message)s')\n" \
           f"from sparsa.cli.main import main\nsys.exit(main({argv!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stderr.count("loaded cranfield") == 1


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "sparsa", "version"], capture_output=True, text=True, cwd="/",
                         check=False)
    assert out.returncode == 0 and "sparsa 0.1.0" in out.stderr


def test_eval_warns_about_expected_gain_qrels(tmp_path, capsys):
    run, qrels = tmp_path / "run.trec", tmp_path / "gains.qrels"
    run.write_text("q1 Q0 d1 1 2.0 r\nq1 Q0 d2 2 1.0 r\n")
    qrels.write_text("q1 0 d1 150\nq1 0 d2 300\n")
    assert main(["eval", "--run", str(run), "--qrels", str(qrels), "--measure", "nDCG@10"]) == 0
    assert "expected-gain qrels" in capsys.readouterr().err
    qrels.write_text("q1 0 d1 1\nq1 0 d2 3\n")
    assert main(["eval", "--run", str(run), "--qrels", str(qrels), "--measure", "nDCG@10"]) == 0
    assert "expected-gain" not in capsys.readouterr().err
