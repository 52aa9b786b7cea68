"""The real reader on tiny passages: budgets, citations, streaming, closed-book."""

from __future__ import annotations

import pytest
from sparsa.rag.reader import ReaderConfig, ReaderOutput

from sparsa.errors import ConfigError
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
    assert "<|im_start|>system" in prompt and "[1] Eiffel Tower:" in prompt and "[3] Amazon River:" in prompt
    assert [d.id for d in used] == ["eiffel", "fuji", "amazon"]
    closed_ids, none = reader.build_prompt("How tall is Mount Fuji?", [])
    assert none == [] and "Passages" not in reader.tokenizer.decode(closed_ids)


@pytest.mark.parametrize("question", ["How tall is Mount Fuji?", "When was the Eiffel Tower completed?",
                                      "Which river flows through Peru?"])
def test_citations_always_come_from_the_retrieved_passages(reader, passages, question):
    output = reader.answer(question, passages.documents)
    assert output.text
    assert set(output.citations) <= {"eiffel", "fuji", "amazon"}
    assert output.passages == ["eiffel", "fuji", "amazon"]
    assert 0 < output.new_tokens <= 10 and output.mean_logprob <= 0


def test_stream_yields_text_then_the_output(reader, passages):
    pieces = list(reader.stream("How tall is Mount Fuji?", passages.documents))
    *texts, final = pieces
    assert isinstance(final, ReaderOutput) and all(isinstance(t, str) for t in texts)
    assert "".join(texts).strip() == final.raw
    again = reader.answer("How tall is Mount Fuji?", passages.documents)  # greedy: the same answer
    assert (again.raw, again.citations) == (final.raw, final.citations)


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


def test_sparse_attention_needs_the_kernels_hook():
    import importlib.util

    from sparsa.rag.reader import SPARSE_HOOK, install_sparse_attention

    if importlib.util.find_spec(SPARSE_HOOK[0]) is not None:
        pytest.skip("the kernels package provides the hook")
    with pytest.raises(ConfigError, match="attention='full'"):
        install_sparse_attention(object())
