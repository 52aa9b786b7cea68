"""Readers and writers for corpora, queries, qrels and runs (BEIR layout and TREC formats)."""

from __future__ import annotations

from sparsa.data.beir import Dataset, load_corpus, load_dataset, read_corpus, read_queries
from sparsa.data.trec import read_qrels, read_run, write_qrels, write_run

__all__ = [
    "Dataset",
    "load_corpus",
    "load_dataset",
    "read_corpus",
    "read_qrels",
    "read_queries",
    "read_run",
    "write_qrels",
    "write_run",
]
