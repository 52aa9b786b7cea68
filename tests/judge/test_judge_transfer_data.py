"""bench/judge_transfer_data.py: the label mapping of the transfer set on a tiny TimeQA-format fixture,
the BM25 used for hard negatives, and TimeQA's detokenisation."""

from __future__ import annotations

import gzip
import json
import random

from bench.judge_transfer_data import bm25_ranking, detokenize, timeqa_pairs

LONG = " ".join(["word"] * 25)


def page(index: str, paras: list[str], questions: list) -> dict:
    return {"index": index, "type": "P1", "link": index, "paras": paras, "questions": questions}


def test_timeqa_grades(tmp_path):
    ada = page("/wiki/Ada", ["Ada ( engineer )", f"Ada worked at Acme from 1990 . {LONG}",
                             f"Ada worked at Bolt from 2000 . {LONG}", f"Ada liked tea . {LONG}", "Infobox"],
               [["Where did Ada work from 1990 to 1999?", [{"para": 1, "from": 0, "end": 4, "answer": "Acme"}]],
                ["Where did Ada work from 2000 to 2005?", [{"para": 2, "from": 0, "end": 4, "answer": "Bolt"}]]])
    bob = page("/wiki/Bob", ["Bob", f"Bob sailed . {LONG}"], [])
    for split, pages in (("train", [ada, bob]), ("test", [])):
        with gzip.open(tmp_path / f"human_annotated_{split}.json.gz", "wt") as f:
            json.dump(pages, f)
    pairs = timeqa_pairs(tmp_path, random.Random(0))
    first = {p.passage.id: p.grade for p in pairs if p.query.id.endswith(":q0")}
    # its answer 3, the other question's answer 1, the only long other paragraph 0 ("Infobox" is too short),
    # a paragraph of the other page 0
    assert first == {"timeqa:train:/wiki/Ada:p1": 3, "timeqa:train:/wiki/Ada:p2": 1, "timeqa:train:/wiki/Ada:p3": 0,
                     "timeqa:train:/wiki/Bob:p1": 0}
    answer = next(p for p in pairs if p.passage.id == "timeqa:train:/wiki/Ada:p1")
    assert answer.query.text == "Where did Ada work from 1990 to 1999?"
    assert answer.passage.title == "Ada (engineer)" and answer.passage.text.startswith("Ada worked at Acme from 1990.")
    assert all(p.passage.meta == {"source": "timeqa"} for p in pairs) and len(pairs) == 8


def test_bm25_ranking_and_detokenize():
    docs = ["the wing flutter of panels", "heat conduction in slabs", "flutter flutter panels at supersonic speed"]
    top = bm25_ranking(["panel flutter supersonic", "heat slabs"], docs, depth=2)
    assert top.tolist() == [[2, 0], [1, 0]]
    assert detokenize("Condor ( airline ) , owned by Ada 's firm .") == "Condor (airline), owned by Ada's firm."
