"""How fast can any float32 implementation encode SciFact with MiniLM-L6 on this CPU? (issue 10)

    python bench/bench_cpu_ceiling.py [--threads 2] [--encoding bench/results/encoding_cpu_avx2.json]

Counts MiniLM-L6's multiply-adds per SciFact document from the real token lengths (truncated at 256,
as both sparsa and sentence-transformers do): the six layers' QKV, output and feed-forward matrices
(2 x 1.77M FLOP per token) plus attention's two L x L products. Then times the best float32 matrix
multiply this CPU manages (torch.mm, square sizes and the feed-forward's own shape) with ``--threads``
threads (the best of ten runs each), and divides: no float32 encoder can exceed that rate, whatever it fuses, because the matrix
work alone takes that long. Compared with twice the sentence-transformers rate measured in
``--encoding`` (the issue's target). Prints a table and writes bench/results/cpu_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import write_results

from sparsa.data import load_dataset
from sparsa.models import resolve_model

HIDDEN, FFN, LAYERS, MAX_TOKENS = 384, 1536, 6, 256  # all-MiniLM-L6-v2


def flops_per_doc(lengths: np.ndarray) -> float:
    """Mean float operations per document: the dense layers per token, attention per token pair."""
    per_token = 2 * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN) * LAYERS
    attention = 2 * 2 * HIDDEN * LAYERS  # QK^T and PV, per (query token, key token) pair
    return float(np.mean(per_token * lengths + attention * lengths**2))


def best_gflops(shape: tuple[int, int, int], repeats: int = 10) -> float:
    import torch

    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * m * k * n / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoding", default="bench/results/encoding_cpu_avx2.json",
                        help="a bench_encoding.py result with a minilm-l6 row (sentence-transformers' docs/s)")
    args = parser.parse_args()
    import torch
    from transformers import AutoTokenizer

    from sparsa.cli.common import dataset_path

    torch.set_num_threads(args.threads)
    texts = [d.full_text for d in load_dataset(dataset_path(args.dataset)).corpus.documents]
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("minilm-l6")))
    lengths = np.array([len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]],
                       dtype=np.float64)
    per_doc = flops_per_doc(lengths)
    shapes = {"square 1024": (1024, 1024, 1024), "square 2048": (2048, 2048, 2048), "square 3072": (3072, 3072, 3072),
              "feed-forward up, 64 docs x 256 tokens": (64 * MAX_TOKENS, HIDDEN, FFN)}
    gemm = {name: round(best_gflops(shape), 1) for name, shape in shapes.items()}
    ceiling = max(gemm.values()) * 1e9 / per_doc
    rows = [{"what": f"float32 matmul, {name}", "gflop_per_s": g} for name, g in gemm.items()]
    result = {"dataset": args.dataset, "docs": len(texts), "mean_tokens": round(float(lengths.mean()), 1),
              "gflop_per_doc": round(per_doc / 1e9, 3), "threads": args.threads, "matmul": rows,
              "ceiling_docs_per_s": round(ceiling, 1)}
    encoding = Path(args.encoding)
    if encoding.exists():
        row = next(r for r in json.loads(encoding.read_text())["rows"] if r["model"] == "minilm-l6")
        st, ours = row["baseline"]["docs_per_s"], row["ours"]["docs_per_s"]
        result["measured"] = {
            "from": str(encoding), "sentence_transformers_docs_per_s": st, "sparsa_docs_per_s": ours,
            "sentence_transformers_gflop_per_s": round(st * per_doc / 1e9, 1),
            "sparsa_gflop_per_s": round(ours * per_doc / 1e9, 1),
            "target_docs_per_s (2x sentence-transformers)": round(2 * st, 1),
            "target_gflop_per_s": round(2 * st * per_doc / 1e9, 1),
            "target_over_ceiling": round(2 * st / ceiling, 2)}
    print(f"{'float32 matmul':45s} GFLOP/s")
    for row in rows:
        print(f"{row['what']:45s} {row['gflop_per_s']:7.1f}")
    print(f"MiniLM-L6: {per_doc / 1e9:.2f} GFLOP per SciFact document ({lengths.mean():.0f} tokens on average)")
    print(f"ceiling: {ceiling:.1f} docs/s at the best matmul rate")
    if "measured" in result:
        m = result["measured"]
        print(f"sentence-transformers {m['sentence_transformers_docs_per_s']} docs/s "
              f"({m['sentence_transformers_gflop_per_s']} GFLOP/s), sparsa {m['sparsa_docs_per_s']} docs/s "
              f"({m['sparsa_gflop_per_s']} GFLOP/s); 2x target {m['target_docs_per_s (2x sentence-transformers)']} "
              f"docs/s = {m['target_over_ceiling']}x the ceiling")
    print(write_results("cpu_ceiling", result, packages=("torch",)))


if __name__ == "__main__":
    main()
