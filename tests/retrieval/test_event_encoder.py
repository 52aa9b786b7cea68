"""Event windows never leak the future; the event-aware head has the right shapes, gate and persistence."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from sparsa.errors import ConfigError, IndexCorruptError
from sparsa.retrieval.event_encoder import EventEncoderConfig, EventQueryEncoder
from sparsa.retrieval.event_window import EventStore

DIM = 16
DAY0 = dt.date(2022, 10, 1)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def store() -> EventStore:
    rng = np.random.default_rng(0)
    dates = [DAY0 + dt.timedelta(days=int(d)) for d in rng.integers(0, 60, size=200)] + [None]
    return EventStore([f"e{i}" for i in range(201)], dates, _unit(rng.normal(size=(201, DIM))))


@pytest.mark.parametrize("selection", ["similar", "recent"])
@pytest.mark.parametrize("window_days", [0, 3, 14, 100])
def test_window_never_leaks_future_events(store, selection, window_days):
    rng = np.random.default_rng(window_days)
    for offset in range(0, 60, 7):
        when = DAY0 + dt.timedelta(days=offset)
        query = _unit(rng.normal(size=(1, DIM)))[0]
        window = store.select(query, when, window_days, max_events=1000, selection=selection)
        days = store.days[window.indices]
        assert not np.isnat(days).any()  # undated events never join a window
        assert (days <= np.datetime64(when)).all()
        assert (days >= np.datetime64(when) - np.timedelta64(window_days, "D")).all()
        expected = store.in_window(when, window_days)
        assert sorted(window.indices) == sorted(expected)  # max_events large: everything in the window
        assert (window.ages >= 0).all() and (window.ages <= window_days).all()


def test_window_cap_keeps_most_similar_or_most_recent(store):
    when = DAY0 + dt.timedelta(days=40)
    query = store.embeddings[store.in_window(when, 20)[0]]
    similar = store.select(query, when, 20, max_events=5, selection="similar")
    assert len(similar.indices) == 5 and np.all(np.diff(similar.scores) <= 0)
    assert similar.scores[0] == pytest.approx(1.0, abs=1e-5)  # the query's own event first
    recent = store.select(query, when, 20, max_events=5, selection="recent")
    in_window_ages = (np.datetime64(when) - store.days[store.in_window(when, 20)]).astype(int)
    assert sorted(recent.ages) == sorted(np.sort(in_window_ages)[:5])
    with pytest.raises(ConfigError):
        store.select(query, when, 20, max_events=0)


def test_batch_pads_and_masks(store):
    queries = _unit(np.random.default_rng(1).normal(size=(3, DIM)))
    whens = [DAY0 - dt.timedelta(days=5), DAY0 + dt.timedelta(days=2), DAY0 + dt.timedelta(days=59)]
    events, ages, mask = store.batch(queries, whens, window_days=7, max_events=8)
    assert events.shape == (3, 8, DIM) and ages.shape == mask.shape == (3, 8)
    assert not mask[0].any()  # no event before the first date
    assert mask[2].all()
    assert np.all(events[~mask] == 0)


def _encoder(**overrides) -> EventQueryEncoder:
    import torch

    torch.manual_seed(0)
    config = EventEncoderConfig(dim=DIM, heads=2, window_days=14, max_events=8, dropout=0.0, **overrides)
    return EventQueryEncoder(config, backbone="unused")  # the head alone: queries come as vectors


def test_forward_shapes_and_gate(store):
    import torch

    encoder = _encoder()
    queries = _unit(np.random.default_rng(2).normal(size=(4, DIM)))
    whens = [DAY0 + dt.timedelta(days=d) for d in (-3, 10, 30, 50)]
    out = encoder.encode_vectors(queries, whens, store)
    assert out.shape == (4, DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out[0], queries[0], atol=1e-6)  # an empty window leaves the query as it was
    assert not np.allclose(out[1:], queries[1:], atol=1e-3)  # events move the others
    # a closed gate (bias -> -inf) gives the plain query back; an open one moves it toward the attended events
    head = encoder.head
    with torch.no_grad():
        head.gate.bias.fill_(-1e4)
    np.testing.assert_allclose(encoder.encode_vectors(queries, whens, store), queries, atol=1e-5)
    with torch.no_grad():
        head.gate.bias.fill_(1e4)
    opened = encoder.encode_vectors(queries, whens, store)
    events, _, mask = store.batch(queries, whens, 14, 8)
    for row in range(1, 4):
        assert (opened[row] @ events[row][mask[row]].mean(axis=0)
                > queries[row] @ events[row][mask[row]].mean(axis=0))


def test_without_events_needs_no_store():
    encoder = _encoder(use_events=False)
    queries = _unit(np.random.default_rng(3).normal(size=(2, DIM)))
    np.testing.assert_allclose(encoder.encode_vectors(queries, [DAY0, DAY0], None), queries, atol=1e-6)
    with pytest.raises(ConfigError, match="EventStore"):
        _encoder().encode_vectors(queries, [DAY0, DAY0], None)
    with pytest.raises(ConfigError, match="divisible"):
        EventEncoderConfig(dim=10, heads=4)


def test_save_load_round_trip(store, tmp_path):
    import torch

    encoder = _encoder()
    with torch.no_grad():
        for p in encoder.head.parameters():
            p.add_(0.01 * torch.randn_like(p))
    queries = _unit(np.random.default_rng(4).normal(size=(3, DIM)))
    whens = [DAY0 + dt.timedelta(days=d) for d in (10, 20, 40)]
    expected = encoder.encode_vectors(queries, whens, store)
    folder = encoder.save(tmp_path / "event-encoder", training={"examples": 3})
    loaded = EventQueryEncoder.load(folder, backbone="unused")
    assert loaded.config == encoder.config
    np.testing.assert_allclose(loaded.encode_vectors(queries, whens, store), expected, atol=1e-6)
    (folder / "head.pt").write_bytes(b"broken")
    with pytest.raises(IndexCorruptError):
        EventQueryEncoder.load(folder)
