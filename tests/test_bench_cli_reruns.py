"""bench/cli_reruns.py: figures a step printed are set beside the published ones (read from the committed
records by path: every call reads all of them, so a record that loses a path fails here), and steps not
given keep their earlier rows. The script runs as a subprocess, the way the lead runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "bench" / "results"


def rerun(*args: str) -> None:
    subprocess.run([sys.executable, str(REPO / "bench" / "cli_reruns.py"), *args], check=True, cwd=REPO,
                   capture_output=True, text=True)


def test_rows_beside_published_figures_and_kept_across_calls(tmp_path: Path) -> None:
    amar = tmp_path / "amar-base"
    amar.mkdir()
    # what `kg eval` prints: log lines, then its JSON line
    (amar / "eval-lm.log").write_text('loaded 10 triples\n'
                                      '{"mode": "lm", "by_hops": {"1-hop": 0.003, "2-hop": 0.0}}\n')
    (amar / "eval-text.log").write_text('{"mode": "text", "by_hops": {"1-hop": 0.25, "2-hop": 0.19}}\n')
    router = tmp_path / "router"
    router.mkdir()
    test = {policy: {"em": 0.3, "f1": 0.35} for policy in ("routed (popularity+coverage)", "always-retrieve")}
    (router / "router-rows.json").write_text(json.dumps({"report": {"test": test}, "fit": [], "test": []}))
    (router / "gpu.txt").write_text("NVIDIA H100 80GB HBM3, 81559 MiB\n")
    out = tmp_path / "cli_reruns.json"

    rerun(f"amar-base={amar}", "--device", "amar-base=2-core CPU", "--wheel", "abc1234", "--out", str(out))
    rerun(f"router={router}", "--wheel", "def5678", "--out", str(out))

    rows = {row["figure"]: row for row in json.loads(out.read_text())["rows"]}
    published = json.loads((RECORDS / "rag.json").read_text())
    text_1hop = rows["KG as text, MetaQA test 1-hop Hits@1"]
    assert text_1hop["published"] == published["amar"]["table"]["1-hop"]["text"]["hits@1"]
    assert (text_1hop["cli"], text_1hop["device"], text_1hop["wheel"]) == (0.25, "2-core CPU", "abc1234")
    assert text_1hop["difference"] == round(0.25 - text_1hop["published"], 4)
    assert rows["LM alone, MetaQA test 1-hop Hits@1"]["cli"] == 0.003
    routed = rows["Qwen router test, routed (popularity+coverage), F1"]
    assert (routed["cli"], routed["device"], routed["wheel"]) == (0.35, "NVIDIA H100 80GB HBM3", "def5678")
    assert "cli" not in rows["Mistral-SPLADE (SmolLM2-135M), scifact nDCG@10"]  # not run
