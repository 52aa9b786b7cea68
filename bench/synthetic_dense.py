"""A synthetic dense collection shaped like real minilm-l6 embeddings, for index benchmarks at scale.

Seeds are real, L2-normalised minilm-l6 embeddings (``--source``: an ``.npy`` of them, or
``--encode-scifact N`` to encode the first N SciFact documents here). Each synthetic vector is a
seed plus anisotropic noise drawn in the seeds' own principal-component basis (scaled by each
component's standard deviation, times a per-vector spread in [0.4, 1.0]), then re-normalised.
So the set is a mixture of as many clusters as there are seeds, with the covariance of real
embeddings, not isotropic blobs. Queries are fresh draws from the same mixture. Deterministic for
a seed.

    python bench/synthetic_dense.py --source seeds.npy --n 1000000 --queries 500 --out .stage/dense/synth-1m
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def encode_scifact(n: int) -> np.ndarray:
    from sparsa.config import load_settings
    from sparsa.data import load_corpus
    from sparsa.retrieval.dense import DenseConfig, DenseEncoder

    docs = load_corpus(load_settings().data_dir / "scifact").documents[:n]
    return DenseEncoder(DenseConfig(max_length=128)).encode_documents([d.full_text for d in docs])


def synthesize(seeds: np.ndarray, n: int, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    centred = seeds - seeds.mean(axis=0)
    _, singular, basis = np.linalg.svd(centred, full_matrices=False)  # basis rows: principal directions
    scale = (singular / np.sqrt(len(seeds))).astype(np.float32)  # std along each direction
    out = np.empty((n, seeds.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        picks = rng.integers(0, len(seeds), m)
        spread = rng.uniform(0.4, 1.0, (m, 1)).astype(np.float32)
        noise = (rng.standard_normal((m, len(scale)), dtype=np.float32) * scale) @ basis.astype(np.float32)
        x = seeds[picks] + spread * noise
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help=".npy of real minilm-l6 embeddings")
    parser.add_argument("--encode-scifact", type=int, default=0,
                        help="encode the first N SciFact documents instead")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    seeds = np.load(args.source).astype(np.float32) if args.source else encode_scifact(args.encode_scifact)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "vectors.npy", synthesize(seeds, args.n, rng))
    np.save(args.out / "queries.npy", synthesize(seeds, args.queries, rng))
    (args.out / "source.json").write_text(json.dumps({
        "seeds": (str(args.source) if args.source
                  else f"minilm-l6 over the first {args.encode_scifact} SciFact documents"),
        "num_seeds": len(seeds), "n": args.n, "queries": args.queries, "seed": args.seed,
        "dim": seeds.shape[1]}))
    print(f"wrote {args.n} vectors and {args.queries} queries ({seeds.shape[1]}-d, {len(seeds)} "
          f"seeds) to {args.out}")


if __name__ == "__main__":
    main()
