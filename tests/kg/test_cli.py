"""``sparsa kg ask`` and ``sparsa train amar --kg --qa`` in-process, on a slice of the real MetaQA KB
(every triple of four movies, written as a triples TSV) with the real minilm-l6 and SmolLM2."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from sparsa.cli.main import main

MOVIES = ("Big", "Splash", "Cast Away", "Kismet")


@pytest.fixture(scope="module")
def metaqa_slice(shared_data, tmp_path_factory):
    """(triples TSV, question file): the MetaQA triples of MOVIES and the 1-hop dev questions about them."""
    folder = tmp_path_factory.mktemp("kg")
    with gzip.open(shared_data / "metaqa" / "kb_reconstructed.txt.gz", "rt") as f:
        triples = [line.rstrip("\n").split("|") for line in f if line.split("|", 1)[0] in MOVIES]
    kb = folder / "kb.tsv"
    kb.write_text("".join("\t".join(t) + "\n" for t in triples))
    with gzip.open(shared_data / "metaqa" / "1-hop" / "vanilla" / "qa_dev.txt.gz", "rt") as f:
        asked = [line for line in f if any(f"[{m}]" in line for m in MOVIES)]
    qa = folder / "qa.txt"
    qa.write_text("".join(asked))
    assert len(triples) > 30 and len(asked) >= 3
    return kb, qa


def _ask(capsys, *argv: str) -> dict:
    assert main(["-q", "kg", "ask", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_kg_ask_answers_from_a_triples_tsv(capsys, metaqa_slice, shared_data, tmp_path):
    kb, _ = metaqa_slice
    answer = _ask(capsys, "who directed [Big]", "--kg", str(kb), "--max-paths", "2")
    assert answer["answer"] == "Penny Marshall" and answer["topic"] == "Big" and answer["mode"] == "text"
    assert "Big directed by: Penny Marshall" in [k["text"] for k in answer["knowledge"]]
    # SmolLM2's own template: the ChatML user turn, and no default system turn
    assert answer["prompt"].startswith("<|im_start|>user\nKnowledge:\nEntities: Big\n")
    assert answer["prompt"].endswith("Answer with one name only.<|im_end|>\n"
                                     "<|im_start|>assistant\nThe answer is")
    # MetaQA's own pipe-separated file reads as the same graph
    piped = tmp_path / "kb.txt.gz"
    with gzip.open(piped, "wt") as f:
        f.write(kb.read_text().replace("\t", "|"))
    again = _ask(capsys, "who directed [Big]", "--kg", str(piped), "--max-paths", "2")
    assert again["knowledge"] == answer["knowledge"] and again["answer"] == answer["answer"]


def test_kg_ask_reads_with_any_chat_template(capsys, metaqa_slice, tmp_path):
    """A reader folder with another chat template (Zephyr's layout: <|user|> ... eos <|assistant|>):
    the prompt is built from that template, with no ChatML in it."""
    from sparsa.models import resolve_model

    kb, _ = metaqa_slice
    source, folder = Path(resolve_model("smollm2-135m-instruct")), tmp_path / "zephyr-style"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        (folder / name).symlink_to(source / name)
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text(
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + "
        "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
    answer = _ask(capsys, "who directed [Big]", "--kg", str(kb), "--max-paths", "2", "--model", str(folder),
                  "--max-new-tokens", "4")
    assert answer["prompt"].startswith("<|user|>\nKnowledge:\n") and "<|im_start|>" not in answer["prompt"]
    assert answer["prompt"].endswith("one name only.<|im_end|>\n<|assistant|>\nThe answer is")
    assert isinstance(answer["answer"], str) and answer["reader"] == str(folder)


def test_train_amar_on_a_triples_file_then_ask_with_the_head(capsys, metaqa_slice, tmp_path):
    kb, qa = metaqa_slice
    head = tmp_path / "head"
    assert main(["-q", "train", "amar", "--kg", str(kb), "--qa", str(qa), "--out", str(head),
                 "--gate-epochs", "1", "--gate-batch", "2", "--lm-steps", "1", "--lm-batch", "1"]) == 0
    assert ((head / "amar_head.pt").is_file()
            and json.loads((head / "training.json").read_text())["lm_steps"] == 1)
    capsys.readouterr()
    answer = _ask(capsys, "who directed [Splash]", "--kg", str(kb), "--head", str(head),
                  "--max-new-tokens", "6")
    assert answer["mode"] == "amar" and answer["topic"] == "Splash"
    assert all(0.0 <= k["gate"] <= 1.0 for k in answer["knowledge"])
    shown = [answer["knowledge"][i]["text"] for i in answer["shown"]]
    assert any(t.startswith("Splash ") for t in shown)  # min_open_paths keeps the best-gated path open
    assert all(t in answer["prompt"] for t in shown)


def test_kg_errors_are_clear(capsys, metaqa_slice, tmp_path):
    kb, _ = metaqa_slice
    bad = tmp_path / "bad.tsv"
    bad.write_text("Big\tdirected_by\tPenny Marshall\nBig\tdirected_by\n")
    bad_qa = tmp_path / "qa.txt"
    bad_qa.write_text("who directed [Big]\n")
    cases = [
        (["kg", "ask", "who directed [Big]", "--kg", str(bad)],
         f"{bad}:2: expected head<TAB>relation<TAB>tail"),
        (["kg", "ask", "who directed [Big]", "--kg", str(kb), "--mode", "amar"], "--mode amar needs --head"),
        (["kg", "ask", "q", "--kg", str(kb), "--mode", "graph"], "--mode 'graph'"),
        (["kg", "ask", "  ", "--kg", str(kb)], "the question is empty"),
        (["kg", "ask", "q", "--kg", str(tmp_path / "none.tsv")], "no such knowledge-base file"),
        (["train", "amar", "--out", str(tmp_path / "h"), "--kg", str(kb)], "--kg FILE with --qa FILE"),
        (["train", "amar", "--out", str(tmp_path / "h"), "--kg", str(kb), "--qa", str(bad_qa)],
         f"{bad_qa}:1: expected 'question\\tanswer1|answer2'"),
    ]
    for argv, message in cases:
        assert main(["-q", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_ask_with_kg_answers_from_the_graph(capsys, metaqa_slice, tmp_path):
    """``sparsa ask --kg`` runs the same KG reader as ``kg ask`` through the QA pipeline: route kg, the
    knowledge in the answer; ``--mode recall`` reads without the graph; a [kg] config table does the same."""
    kb, _ = metaqa_slice
    settings = tmp_path / "paths.toml"  # as kg ask --max-paths 2
    settings.write_text('[kg]\nmax_paths = 2\n[reader]\ndevice = "cpu"\n')
    assert main(["-q", "ask", "who directed [Big]", "--kg", str(kb), "--config", str(settings),
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["text"] == "Penny Marshall" and answer["route"] == "kg" and answer["passages"] == []
    shown = [k["text"] for k in answer["knowledge"] if k["shown"]]
    assert "Big directed by: Penny Marshall" in shown and answer["timings"]["retrieve"] > 0
    config = tmp_path / "kg.toml"
    config.write_text(f'[kg]\npath = "{kb}"\n[reader]\ndevice = "cpu"\n')
    assert main(["-q", "ask", "who directed [Big]", "--config", str(config), "--mode", "recall",
                 "--json"]) == 0
    closed = json.loads(capsys.readouterr().out)
    assert closed["route"] == "recall" and not any(k["shown"] for k in closed["knowledge"])
    assert main(["-q", "ask", "who directed [Big]", "--kg", str(kb), "--index", "x", "--dataset", "x"]) == 2
    assert "a [kg] chain answers from the graph" in capsys.readouterr().err
    assert main(["-q", "ask", "who directed [Big]", "--kg", str(kb), "--as-of", "2022-01-01"]) == 2
    assert "a knowledge graph has no dates" in capsys.readouterr().err


def test_kg_eval_scores_hits_at_1(capsys, metaqa_slice):
    """``sparsa kg eval``: the bench's Hits@1 over a question file, text mode against the LM alone."""
    kb, qa = metaqa_slice
    assert main(["-q", "kg", "eval", "--kg", str(kb), "--qa", str(qa), "--limit", "4",
                 "--max-paths", "2"]) == 0
    text = json.loads(capsys.readouterr().out)
    assert text["mode"] == "text" and text["questions"] == 4 and 0.0 <= text["hits@1"] <= 1.0
    assert main(["-q", "kg", "eval", "--kg", str(kb), "--qa", str(qa), "--limit", "4", "--mode", "lm"]) == 0
    closed = json.loads(capsys.readouterr().out)
    assert closed["mode"] == "lm" and text["hits@1"] >= closed["hits@1"]  # the graph's knowledge helps
    assert main(["-q", "kg", "eval", "--kg", str(kb), "--qa", str(qa), "--gate-mode", "filter"]) == 2
    assert "give --head" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_config_with_a_kg_needs_no_dataset(metaqa_slice, tmp_path):
    """'sparsa serve --config kg.toml' (a [kg] table, no index) starts where SciFact is not installed (it
    loaded the demo's SciFact corpus before, and failed without it) and /qa answers from the graph."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("fastapi", reason="needs the 'serve' extra")
    import httpx

    from tests.api.live_server import free_port

    kb, _ = metaqa_slice
    config, empty = tmp_path / "kg.toml", tmp_path / "no-data"
    config.write_text(f'[kg]\npath = "{kb}"\nmax_paths = 2\n[reader]\ndevice = "cpu"\n')
    empty.mkdir()
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "sparsa", "serve", "--config", str(config), "--port",
                                   str(port)], stdout=sink, stderr=subprocess.STDOUT,
                                  env={**os.environ, "SPARSA_DATA_DIR": str(empty)})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        answered = httpx.post(base + "/qa", json={"question": "who directed [Big]"}, timeout=60)
        assert answered.status_code == 200, answered.text
        assert answered.json()["route"] == "kg" and answered.json()["answer"] == "Penny Marshall"
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(30) == 0
