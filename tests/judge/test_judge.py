"""The relevance judge on a few real TREC DL 2019 pairs with the real SmolLM2-135M-Instruct:
prefix caching, an interrupted job resumed from its checkpoint, and clear CLI errors."""

from __future__ import annotations

import json

import pytest

from sparsa.cli.main import main
from sparsa.errors import ConfigError, DataFormatError
from sparsa.judge.job import judge_with_checkpoint, read_checkpoint, read_pairs

DL19 = "trec-dl-2019-passage"


@pytest.fixture(scope="module")
def tiny_dl19(tmp_path_factory):
    """Two real DL 2019 queries with three judged passages each, as a small BEIR-layout folder."""
    from sparsa.config import load_settings
    from sparsa.data import load_dataset

    data = load_dataset(load_settings().data_dir / DL19)
    folder = tmp_path_factory.mktemp("dl19")
    queries = data.queries[:2]
    pairs = [(q.id, d) for q in queries for d in sorted(data.qrels[q.id])[:3]]
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{data.qrels[q][d]}\n" for q, d in pairs))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q.id, "text": q.text}) + "\n"
                                                  for q in queries))
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": d, "text": data.corpus[d].text}) + "\n" for d in sorted({d for _, d in pairs})))
    return folder, load_dataset(folder), pairs


@pytest.fixture(scope="module")
def judge():
    from sparsa.judge.judge import JudgeConfig, RelevanceJudge

    return RelevanceJudge(JudgeConfig(max_passage_tokens=96))


def test_cli_rejects_bad_inputs(capsys, tiny_dl19, tmp_path):
    folder, _, pairs = tiny_dl19
    qid, doc = pairs[0]
    cases = {
        "columns.tsv": (f"{qid} {doc}\n{qid} {doc} 1 x 9\n", "columns.tsv:2: expected 'qid docid'"),
        "unknown_doc.tsv": (f"{qid} {doc}\n{qid} nope\n", "unknown_doc.tsv:2: document 'nope' is not in"),
        "unknown_query.tsv": (f"q-none {doc}\n", "unknown_query.tsv:1: query 'q-none' is not in"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["judge", "--pairs", str(tmp_path / name), "--dataset", str(folder),
                     "--out", str(tmp_path / "q.txt")]) == 2, name
        assert message in capsys.readouterr().err, name
    (tmp_path / "run.trec").write_text(f"{qid} Q0 {doc} 1 oops tag\n")
    assert main(["judge", "--run", str(tmp_path / "run.trec"), "--dataset", str(folder),
                 "--out", str(tmp_path / "q.txt")]) == 2
    assert "run.trec:1: score 'oops' is not a number" in capsys.readouterr().err
    assert main(["judge", "--dataset", str(folder), "--out", str(tmp_path / "q.txt")]) == 2
    assert "exactly one of --pairs FILE or --run RUN" in capsys.readouterr().err
    assert main(["judge", "--pairs", str(tmp_path / "columns.tsv"), "--dataset", str(folder),
                 "--scorers", "vibes", "--out", str(tmp_path / "q.txt")]) == 2
    assert "choose from umbrela, ql" in capsys.readouterr().err
    assert not (tmp_path / "q.txt").exists()


def test_checkpoint_errors(tmp_path):
    bad = tmp_path / "ckpt.jsonl"
    bad.write_text('{"header": {"model": "a"}}\n{oops\n{"qid": "1", "docid": "2"}\n')
    with pytest.raises(DataFormatError, match="ckpt.jsonl:2"):
        read_checkpoint(bad)
    bad.write_text('{"header": {"model": "a"}}\n')
    with pytest.raises(ConfigError, match="different judge"):
        read_checkpoint(bad, {"model": "b"})


@pytest.mark.slow
def test_prefix_cache_matches_a_full_forward(judge, tiny_dl19):
    import torch

    _, data, pairs = tiny_dl19
    queries = {q.id: q for q in data.queries}
    query, doc = queries[pairs[0][0]], data.corpus[pairs[0][1]]
    full = judge.tokenizer(judge.prompt(query, doc), add_special_tokens=False)["input_ids"]
    assert full[: len(judge._prefix_ids)] == judge._prefix_ids
    suffix = full[len(judge._prefix_ids):]
    with torch.inference_mode():
        reference = judge.model(input_ids=torch.tensor([full])).logits[0, -1]
        cached = judge._last_logits([suffix, suffix[:-5]])[0]  # a shorter second row pads the first
    assert torch.allclose(reference, cached, atol=1e-3)


@pytest.mark.slow
def test_interrupted_job_resumes_where_it_stopped(judge, tiny_dl19, tmp_path):
    _, data, pairs = tiny_dl19
    queries = {q.id: q for q in data.queries}
    pairs = read_pairs(tiny_dl19[0] / "qrels" / "test.tsv", queries, data.corpus)[:4]
    checkpoint = tmp_path / "ckpt.jsonl"

    def interrupt(done: int) -> None:
        raise KeyboardInterrupt  # killed after the first batch was written

    with pytest.raises(KeyboardInterrupt):
        judge_with_checkpoint(judge, pairs, queries, data.corpus, checkpoint, batch_pairs=2,
                              on_batch=interrupt, show_progress=False)
    assert list(read_checkpoint(checkpoint)) == pairs[:2]
    with checkpoint.open("a") as f:
        f.write('{"qid": "torn')  # a kill while writing leaves half a line
    resumed = judge_with_checkpoint(judge, pairs, queries, data.corpus, checkpoint, batch_pairs=2,
                                    show_progress=False)
    lines = checkpoint.read_text().splitlines()
    assert len(lines) == 1 + 4 and all(json.loads(line) for line in lines)  # header + each pair once
    fresh = judge_with_checkpoint(judge, pairs, queries, data.corpus, tmp_path / "fresh.jsonl", batch_pairs=4,
                                  show_progress=False)
    assert list(resumed) == pairs
    for pair in pairs:
        a, b = resumed[pair], fresh[pair]
        assert a["prompts"] == b["prompts"] and a["ql_tokens"] == b["ql_tokens"]
        assert (set(a["prompts"]) == {"umbrela", "ql", "pl"}
                and a["prompts"]["ql"].endswith(queries[pair[0]].text))
        assert a["prompts"]["pl"].startswith(f"Question: {queries[pair[0]].text}\nPassage:")
        assert a["ql_prior_logprob"] == pytest.approx(b["ql_prior_logprob"], abs=1e-2)
        assert (a["pl_logprob"] == pytest.approx(b["pl_logprob"], abs=5e-2)
                and a["pl_tokens"] == b["pl_tokens"])
        assert a["ql_logprob"] == pytest.approx(b["ql_logprob"], abs=1e-2)
        assert a["label_probs"] == pytest.approx(b["label_probs"], abs=1e-3)
        assert sum(a["label_probs"]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_for_scorers_shares_the_model_and_scores_alike(judge, tiny_dl19):
    """A judge for other scorers reuses the loaded LM; its scores equal the all-scorer judge's."""
    _, data, pairs = tiny_dl19
    queries = {q.id: q for q in data.queries}
    items = [(queries[q], data.corpus[d]) for q, d in pairs[:2]]
    ql_only = judge.for_scorers(("ql",))
    assert ql_only.model is judge.model and judge.config.scorers == ("umbrela", "ql", "pl")
    assert ql_only.config.fingerprint() == {**judge.config.fingerprint(), "scorers": ["ql"]}
    got, full = ql_only.score_pairs(items), judge.score_pairs(items)
    assert (set(got[0]) == {"ql_logprob", "ql_prior_logprob", "ql_tokens"}
            and set(ql_only.prompts(*items[0])) == {"ql"})
    assert [r["ql_logprob"] for r in got] == pytest.approx([r["ql_logprob"] for r in full], abs=1e-3)
    with pytest.raises(ConfigError, match="scorers"):
        judge.for_scorers(("vibes",))


def test_config_rejects_unknown_ql_prompts():
    from sparsa.judge.judge import JudgeConfig

    with pytest.raises(ConfigError, match="ql_prompts"):
        JudgeConfig(ql_prompts=("question", "limerick"))
    with pytest.raises(ConfigError, match="pl"):
        JudgeConfig(scorers=("vibes",))


@pytest.mark.slow
def test_priors_are_the_empty_side_and_prompts_give_one_score_each(judge, tiny_dl19):
    """The QL prior is log P(query | empty passage), the PL prior log P(passage | empty query), and several QL
    prompts give one score each, the first one equal to the single-prompt judge's."""
    from sparsa.judge.judge import JudgeConfig, RelevanceJudge
    from sparsa.types import Document, Query

    _, data, pairs = tiny_dl19
    queries = {q.id: q for q in data.queries}
    items = [(queries[q], data.corpus[d]) for q, d in pairs[:2]]
    records = judge.score_pairs(items)
    query, doc = items[0]
    empty_query, empty_doc = Query(query.id, ""), Document(doc.id, "")
    ql_prior = judge.ql.score_ids([judge._ql_sequence(query, empty_doc)])[0]
    assert records[0]["ql_prior_logprob"] == pytest.approx(float(ql_prior), abs=1e-3)
    assert records[0]["ql_prior_logprob"] == records[1]["ql_prior_logprob"]  # one query, one prior
    pl_prior = judge.ql.score_ids([judge._pl_sequence(empty_query, doc)])[0]
    assert records[0]["pl_prior_logprob"] == pytest.approx(float(pl_prior), abs=1e-3)
    several = RelevanceJudge(JudgeConfig(scorers=("ql",), max_passage_tokens=96,
                                         ql_prompts=("question", "chat")))
    got = several.score_pairs(items)
    assert [len(r["ql_logprobs"]) for r in got] == [2, 2]
    assert got[0]["ql_logprobs"][0] == pytest.approx(records[0]["ql_logprob"], abs=1e-3)
    chat_context, chat_query = several._ql_sequence(query, doc, 1)
    assert several.tokenizer.decode(chat_context + chat_query).endswith("assistant\n" + query.text)
