"""The real reader on tiny passages: budgets, citations, streaming, closed-book."""

from __future__ import annotations

import pytest

from sparsa.errors import ConfigError
from sparsa.rag.reader import ReaderConfig, ReaderOutput
from sparsa.types import Document


def test_context_packing_respects_the_token_budget(reader):
    long_docs = [Document(f"d{i}", " ".join(["word"] * 400), f"Title {i}") for i in range(5)]
    for budget in (20, 100, 250, 700):
        packed = reader.pack_context(long_docs, max_tokens=budget)
        used = sum(len(reader._ids(text)) + 1 for _, text in packed)
        assert packed and used <= budget
        assert [doc.id for doc, _ in packed] == [d.id for d in long_docs[: len(packed)]]  # rank order kept
    assert len(reader.pack_context(long_docs, max_tokens=10_000)) == 5  # each cut to max_passage_tokens


def test_prompt_uses_the_chat_template_and_numbers_passages(reader, passages):
    ids, used = reader.build_prompt("How tall is Mount Fuji?", passages.documents)
    prompt = reader.tokenizer.decode(ids)
    assert "<|im_start|>system" in prompt and "[2] Mount Fuji:" in prompt and "[3] Amazon River:" in prompt
    assert prompt.rstrip().endswith("<|im_start|>assistant") and "How tall is Mount Fuji?" in prompt
    assert [d.id for d in used] == ["eiffel", "fuji", "amazon"]
    closed_ids, none = reader.build_prompt("How tall is Mount Fuji?", [])
    assert none == [] and "Passages" not in reader.tokenizer.decode(closed_ids)


@pytest.mark.parametrize("question", ["How tall is Mount Fuji?", "Which river flows through Peru?"])
def test_citations_always_come_from_the_retrieved_passages(reader, passages, question):
    output = reader.answer(question, passages.documents)
    assert output.text
    assert set(output.citations) <= {"eiffel", "fuji", "amazon"}
    assert output.passages == ["eiffel", "fuji", "amazon"]
    assert 0 < output.new_tokens <= 8 and output.mean_logprob <= 0


def test_stream_yields_text_then_the_output(reader, passages):
    pieces = list(reader.stream("How tall is Mount Fuji?", passages.documents))
    *texts, final = pieces
    assert isinstance(final, ReaderOutput) and all(isinstance(t, str) for t in texts)
    assert "".join(texts).strip() == final.raw
    assert final.timings["prefill"] > 0 and final.timings["read"] >= final.timings["prefill"]


def test_closed_book_answers_without_citations(reader):
    output = reader.answer("What is the capital of France?")
    assert output.passages == [] and output.citations == [] and output.text


def test_bad_reader_input_is_a_clear_error(reader):
    with pytest.raises(ConfigError, match="empty"):
        reader.answer("   ")
    with pytest.raises(ConfigError, match="attention"):
        ReaderConfig(attention="flash")
    with pytest.raises(ConfigError, match="token limits"):
        ReaderConfig(max_new_tokens=0)


@pytest.mark.slow
def test_sparse_attention_reader_matches_full_attention_on_short_prompts(reader, passages):
    """Prompts under the kernels' ``min_sparse_tokens`` prefill densely: the answer is the reference's."""
    pytest.importorskip("triton")
    from sparsa.rag.reader import Reader

    sparse = Reader(ReaderConfig(max_new_tokens=8, max_context_tokens=200, attention="sparse"))
    assert sparse.model.config._attn_implementation == "sparsa"
    question = "How tall is Mount Fuji?"
    assert sparse.answer(question, passages.documents).raw == reader.answer(question, passages.documents).raw
    with pytest.raises(ConfigError):
        Reader(ReaderConfig(attention={"prefill": "magic"}))


def test_batched_answers_match_one_at_a_time(reader, passages):
    """Left-padded batches (prompts of different lengths, both routes) give the unbatched answers."""
    items = [("How tall is Mount Fuji?", passages.documents), ("What is the capital of France?", []),
             ("Which river flows through Peru?", passages.documents[2:]), ("Who wrote Hamlet?", [])]
    single = [reader.answer(question, docs) for question, docs in items]
    for batch_size in (3, 4):
        batched = reader.answer_batch(items, batch_size=batch_size)
        assert [b.raw for b in batched] == [s.raw for s in single]
        assert [b.citations for b in batched] == [s.citations for s in single]
        assert [b.passages for b in batched] == [s.passages for s in single]
        assert [b.new_tokens for b in batched] == [s.new_tokens for s in single]
        assert [b.mean_logprob for b in batched] == pytest.approx([s.mean_logprob for s in single], abs=1e-4)


def test_batch_generation_stops_each_row_on_its_own(reader):
    from sparsa.rag.generate import generate_greedy_batch

    prompts = [reader.build_prompt(q, [])[0] for q in ("What is the capital of France?", "Name a colour.")]
    for max_new in (1, 6):
        results = generate_greedy_batch(reader.model, prompts, max_new, reader.stop_ids, pad_id=0)
        for (tokens, stats), prompt in zip(results, prompts, strict=True):
            assert 0 < len(tokens) <= max_new and stats.new_tokens == len(tokens) == len(stats.logprobs)
            assert not set(tokens) & set(reader.stop_ids) and stats.prompt_tokens == len(prompt)
            assert all(lp <= 0 for lp in stats.logprobs)
    with pytest.raises(ValueError):
        generate_greedy_batch(reader.model, [], 4, reader.stop_ids, pad_id=0)


PLANTED = Document("planted", "The 2031 Zorblax Prize in chemistry was awarded to Maria Kowalczyk for her "
                              "work on solid-state batteries.", "Zorblax Prize")
PLANTED_QUESTION = "Who won the 2031 Zorblax Prize in chemistry?"


def scifact_passages(shared_data, n: int) -> list[Document]:
    from sparsa.data import load_corpus

    return load_corpus(shared_data / "scifact").documents[:n]


def test_a_planted_passage_is_answered_from_and_cited(shared_data):
    """A fact the LM cannot know, among real distractors: the answer comes from it and cites it.

    SmolLM2-135M, the default CPU reader, answers "The 2031 Zorblax Prize in" (the passage's opening) when
    the passage is first or second; from the third place on it answers the name. It always writes "[2]", the
    citation is checked against the passages (``Reader._output``)."""
    from sparsa.rag.reader import Reader

    reader = Reader(ReaderConfig(max_new_tokens=12, max_context_tokens=1000, max_passage_tokens=64,
                                 device="cpu"))
    for position in (2, 4):
        docs = scifact_passages(shared_data, 4)
        docs.insert(position, PLANTED)
        output = reader.answer(PLANTED_QUESTION, docs)
        assert output.passages[position] == "planted"
        assert "Kowalczyk" in output.text, output.raw
        assert output.citations == ["planted"], output.raw


@pytest.mark.slow
def test_the_sparse_reader_answers_as_the_full_one_where_sparsity_engages(shared_data):
    """A ~1,900-token prompt: block-sparse prefill skips blocks and decode reads a subset of the keys,
    and the answer is the full-attention reader's."""
    pytest.importorskip("triton")
    from sparsa.rag.reader import Reader

    docs = scifact_passages(shared_data, 12)
    docs.insert(5, PLANTED)  # mid-prompt, in blocks the gate may skip
    settings = {"max_new_tokens": 12, "max_context_tokens": 1800, "device": "cpu"}
    full = Reader(ReaderConfig(attention="full", **settings)).answer(PLANTED_QUESTION, docs)
    sparse_reader = Reader(ReaderConfig(attention={"prefill": "block-sparse", "decode": "sparse",
                                                   "budget_tokens": 512, "min_sparse_tokens": 1024},
                                        **settings))
    sparse = sparse_reader.answer(PLANTED_QUESTION, docs)
    stats = sparse_reader.model.sparse_attention_stats
    assert sparse.prompt_tokens >= 1500 and full.prompt_tokens == sparse.prompt_tokens
    assert 0 < stats["prefill_blocks_kept"] < stats["prefill_blocks_visible"]
    assert 0 < stats["decode_keys_read"] < stats["decode_keys_total"]
    assert sparse.raw == full.raw and sparse.citations == full.citations
    # (SmolLM2-135M answers "The 2031 Zorblax Prize in" here with either attention: at ~1,800 tokens it
    # copies the passage's opening; the RealTime QA bench measures accuracy with the larger reader.)


def test_prompts_beyond_the_model_context_are_refused(reader):
    from sparsa.rag.reader import Reader

    with pytest.raises(ConfigError, match="exceeds .*context of 8192 tokens"):
        Reader(ReaderConfig(max_context_tokens=8190, device="cpu"))
    with pytest.raises(ConfigError, match="the prompt has .* tokens"):
        reader.build_prompt("why? " * 9000, [])
