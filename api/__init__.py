"""The REST service (FastAPI): search, rerank, QA and health endpoints."""
