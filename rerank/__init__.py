"""Rerankers callable as a library: ``reranker.rerank(query, candidates) -> list[Hit]``."""
