"""Deadlines stop the work inside the library (issue 26): encoder batches (SPLADE, dense), query-likelihood
scoring batches, and the reader's prefill and decode loop, each with a real model from the registry.

Each test first times one step of the work, gives the whole job a deadline of a few steps (the job needs
dozens), and checks that ``DeadlineExceeded`` comes within one step of the deadline: the work really
stopped, rather than running to its end behind the caller's back."""

from __future__ import annotations

import time

import pytest

from sparsa.deadline import DeadlineExceeded, check_deadline, deadline_scope, remaining


def _step_seconds(job) -> float:
    """Seconds of one step, timed after a first (warm-up) run."""
    job()
    started = time.perf_counter()
    job()
    return time.perf_counter() - started


def _stops_near_deadline(job, step_s: float, steps: int = 4) -> float:
    """Run ``job()`` with a deadline ``steps`` step-times away; returns how far past the deadline it
    stopped (seconds; it must raise ``DeadlineExceeded``)."""
    at = time.monotonic() + steps * step_s
    with deadline_scope(at), pytest.raises(DeadlineExceeded):
        job()
    return time.monotonic() - at


def test_check_deadline_outside_a_scope_does_nothing_and_inside_raises_once_past():
    check_deadline(need=1e9)
    assert remaining() is None
    with deadline_scope(time.monotonic() + 60):
        check_deadline()
        with pytest.raises(DeadlineExceeded, match="would end after the deadline"):
            check_deadline(need=120)
    with deadline_scope(time.monotonic() - 1), pytest.raises(DeadlineExceeded, match="the deadline passed"):
        check_deadline()


@pytest.fixture(scope="module")
def texts(scifact):
    return [d.full_text for d in scifact.corpus.documents[:200]]


def test_splade_encoding_stops_between_batches(texts):
    from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder

    encoder = SpladeEncoder(SpladeConfig(model="splade-tiny", device="cpu", batch_size=2))
    step = _step_seconds(lambda: encoder.encode_documents(texts[:2], show_progress=False))
    late = _stops_near_deadline(lambda: encoder.encode_documents(texts, show_progress=False), step)
    assert late < 3 * step + 0.5, (late, step)  # 100 batches asked; it stopped within a few of the deadline


def test_dense_encoding_stops_between_batches_on_worker_threads(texts):
    """The dense encoder runs two batches at once on the CPU (``map_batches`` with workers): the batches
    not yet started when the deadline passes never run."""
    from sparsa.retrieval.dense import DenseConfig, DenseEncoder

    encoder = DenseEncoder(DenseConfig(model="minilm-l6", device="cpu", batch_size=2))
    step = _step_seconds(lambda: encoder.encode_documents(texts[:2], show_progress=False))
    late = _stops_near_deadline(lambda: encoder.encode_documents(texts, show_progress=False), step)
    assert late < 4 * step + 0.5, (late, step)


def test_query_likelihood_reranking_stops_between_batches(scifact):
    from sparsa.rerank.query_likelihood import QueryLikelihoodConfig, QueryLikelihoodReranker
    from sparsa.types import Query

    reranker = QueryLikelihoodReranker(QueryLikelihoodConfig(device="cpu", max_passage_tokens=64,
                                                             max_tokens_per_batch=160))
    query, docs = Query("q", "vitamin D and bone fractures"), scifact.corpus.documents[:60]
    step = _step_seconds(lambda: reranker.rerank(query, docs[:2]))  # about one batch (two short passages)
    late = _stops_near_deadline(lambda: reranker.rerank(query, docs), step)
    assert late < 3 * step + 0.5, (late, step)


@pytest.fixture(scope="module")
def reader():
    from sparsa.rag.reader import Reader, ReaderConfig

    return Reader(ReaderConfig(max_new_tokens=8, max_context_tokens=200, device="cpu"))


def test_generation_stops_between_decode_steps(reader):
    from sparsa.rag.generate import GenerationStats, generate_greedy

    prompt = reader.tokenizer("Write a long story about a lighthouse keeper.")["input_ids"]
    step = _step_seconds(lambda: list(generate_greedy(reader.model, prompt, 4, stop_ids=[]))) / 4
    stats = GenerationStats()  # no stop ids: it would decode all 400 tokens
    late = _stops_near_deadline(lambda: list(generate_greedy(reader.model, prompt, 400, [], stats)), step, 8)
    assert 0 < stats.new_tokens < 100 and late < 3 * step + 0.5, (stats.new_tokens, late, step)


def test_a_late_generation_never_starts_its_prefill(reader):
    from sparsa.rag.generate import GenerationStats, generate_greedy

    stats = GenerationStats()
    with deadline_scope(time.monotonic() - 0.01), pytest.raises(DeadlineExceeded):
        next(generate_greedy(reader.model, [1, 2, 3], 8, [], stats))
    assert stats.prefill_seconds == 0 and stats.new_tokens == 0


def test_batch_generation_stops_between_decode_steps(reader):
    from sparsa.rag.generate import generate_greedy_batch

    prompts = [reader.tokenizer(text)["input_ids"] for text in ("Tell a long story.", "Describe the sea.")]
    step = _step_seconds(lambda: generate_greedy_batch(reader.model, prompts, 4, [], pad_id=0)) / 4
    job = lambda: generate_greedy_batch(reader.model, prompts, 400, [], pad_id=0)
    late = _stops_near_deadline(job, step, 8)
    assert late < 3 * step + 0.5, (late, step)
