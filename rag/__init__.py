"""Retrieval-augmented QA: reader, retrieve-or-recall routing, knowledge-graph retrieval, judging."""
