"""Line-file I/O shared by the record writers: atomic text files and JSONL (gzip by suffix)."""

import gzip
import json

import pytest

from sparsa.data.trec import atomic_text, numbered_lines, write_jsonl


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.jsonl.gz"])
def test_jsonl_round_trip(tmp_path, name):
    rows = [{"query": "café au lait", "grade": 3}, {"query": "x", "grade": 0}]
    write_jsonl(iter(rows), tmp_path / name)
    assert [json.loads(line) for _, line in numbered_lines(tmp_path / name)] == rows
    if name.endswith(".gz"):
        with gzip.open(tmp_path / name, "rt") as f:
            assert f.read().count("\n") == 2


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_text(path) as f:
        f.write("half a file\n")
        raise RuntimeError("killed midway")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run.trec"]  # no temporary left behind
