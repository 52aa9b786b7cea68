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
        Reader(ReaderConfig(attention="sparse", sparse_settings={"prefill": "magic"}))


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
