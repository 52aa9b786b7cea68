"""The Ray path of an indexing job, on a local Ray instance: same vectors, same shards, resumable."""

from __future__ import annotations

import numpy as np
import pytest

from sparsa.data import load_dataset
from sparsa.indexes import build_index, open_index
from sparsa.types import Corpus
from tests.conftest import needs_java

pytest.importorskip("ray.data")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from sparsa.indexes.ray_encoding import preserve_crash_signal_handlers

    with preserve_crash_signal_handlers():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    with preserve_crash_signal_handlers():  # shutdown resets SIGSEGV to the default, killing a later JVM
        ray.shutdown()


@pytest.fixture(scope="module")
def docs(shared_data):
    return Corpus(load_dataset(shared_data / "cranfield").corpus.documents[:40])


def test_ray_build_matches_the_local_build(ray_local, docs, tmp_path):
    from sparsa.indexes.ray_encoding import RayEncoder, RayOptions
    from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder

    encoder = SpladeEncoder(SpladeConfig(device="cpu"))
    texts = [d.full_text for d in docs.documents]
    # Batches that straddle shards, two actors (one CPU each).
    on_ray = RayEncoder(encoder, texts, RayOptions(batch_size=7, actors=2))
    build_index("splade", docs, tmp_path / "ray", encoder=on_ray, shard_size=16)
    # The build streamed through Ray's actors (not the local encoder's own stream on the driver). Which
    # actor takes which call is Ray's choice (on a busy host one actor may be ready long before the other).
    assert on_ray.stats["documents"] == 40 and on_ray.stats["calls"] == 6
    assert sum(on_ray.stats["actor_documents"].values()) == 40
    build_index("splade", docs, tmp_path / "local", encoder=encoder, shard_size=16)
    ray_index, local_index = open_index(tmp_path / "ray"), open_index(tmp_path / "local")
    assert ray_index.manifest["encoder"] == local_index.manifest["encoder"]
    a, b = ray_index.matrix, local_index.matrix
    assert a.doc_ids == b.doc_ids
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    # batches differ, so padding differs: float noise only
    np.testing.assert_allclose(a.values, b.values, atol=1e-4)


def test_packed_batches_round_trip():
    from sparsa.indexes.ray_encoding import _pack, _unpack
    from sparsa.sparse_rows import SparseRows
    from sparsa.types import SparseVector

    vectors = [SparseVector(np.array([3, 9], np.int32), np.array([0.5, 1.5], np.float32)),
               SparseVector(np.zeros(0, np.int32), np.zeros(0, np.float32)),
               SparseVector(np.array([1], np.int32), np.array([2.0], np.float32))]
    rows = SparseRows.from_vectors(vectors).slice(1, 3)  # a view with a non-zero start
    back = _unpack(_pack(rows), 2, None)
    np.testing.assert_array_equal(back.indptr, [0, 0, 1])
    np.testing.assert_array_equal(back.indices, [1])
    np.testing.assert_array_equal(back.values, [2.0])
    dense = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(_unpack(_pack(dense), 2, 3), dense)


def test_ray_encoder_resumes_mid_job_and_encodes_dense(ray_local, docs):
    from sparsa.indexes.ray_encoding import RayEncoder, RayOptions
    from sparsa.retrieval.dense import DenseConfig, DenseEncoder

    encoder = DenseEncoder(DenseConfig(device="cpu"))
    texts = [d.full_text for d in docs.documents]
    on_ray = RayEncoder(encoder, texts, RayOptions(batch_size=5))
    # As after a killed job: the first shards exist, the build asks for the rest, in order.
    second, third = on_ray.encode_documents(texts[16:32]), on_ray.encode_documents(texts[32:])
    expected = encoder.encode_documents(texts[16:])
    got = np.concatenate([second, third])
    # Other batches, other padding; on CPUs with native bf16 the encoder runs in bf16: compare directions.
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert got.shape == expected.shape and cosine.min() > 0.999
    with pytest.raises(Exception, match="not part of its job"):
        on_ray.encode_documents(["a text this job never had"])


def test_build_index_job_takes_a_ray_job_encoder_whose_stats_the_caller_reads(ray_local, docs, tmp_path):
    """What ``sparsa index --ray`` runs, with the encoder made outside (``job_encoder``) so its stats stay
    readable after the build; an encoder together with the settings it replaces is refused."""
    from sparsa.errors import ConfigError
    from sparsa.indexes import build_index_job, job_encoder
    from sparsa.indexes.ray_encoding import RayEncoder, RayOptions

    options = RayOptions(batch_size=16, actors=1)
    encoder = job_encoder("dense", docs, device="cpu", ray=options)
    assert isinstance(encoder, RayEncoder) and encoder.stats == {}
    path = build_index_job("dense", docs, tmp_path / "ray", encoder=encoder, show_progress=False)
    assert encoder.stats["documents"] == 40 and encoder.stats["calls"] == 3  # 16 + 16 + 8
    assert sum(encoder.stats["actor_documents"].values()) == 40
    assert len(open_index(path).doc_ids) == 40
    with pytest.raises(ConfigError, match="replaces model, device, ray"):
        build_index_job("dense", docs, tmp_path / "again", encoder=encoder, ray=options)
    with pytest.raises(ConfigError, match="use no encoder"):
        job_encoder("bm25", docs)


_LUCENE_THEN_RAY = """
import faulthandler, sys
faulthandler.enable()  # as under pytest: part of the chain of handlers that broke
from sparsa.data import load_dataset
from sparsa.indexes import build_index, open_index
from sparsa.indexes.ray_encoding import RayOptions, _init_ray, preserve_crash_signal_handlers

data = load_dataset(sys.argv[1])  # all of Cranfield: a few JVM safepoints and null checks are certain
build_index("bm25", data.corpus, sys.argv[2] + "/before", show_progress=False)  # starts the JVM
import ray

def bm25_run(name):
    build_index("bm25", data.corpus, sys.argv[2] + "/" + name, show_progress=False)
    print(len(open_index(sys.argv[2] + "/" + name).search(data.queries, k=10, show_progress=False)))

_init_ray(RayOptions())
bm25_run("after-init")
with preserve_crash_signal_handlers():
    ray.shutdown()
bm25_run("after-shutdown")
"""


def test_lucene_keeps_working_in_a_process_after_ray_starts(shared_data, tmp_path):
    """Ray's init and shutdown used to replace the JVM's SIGSEGV handler: the next Lucene call segfaulted."""
    import subprocess
    import sys

    needs_java()
    done = subprocess.run([sys.executable, "-c", _LUCENE_THEN_RAY, str(shared_data / "cranfield"),
                           str(tmp_path)], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["225", "225"]
