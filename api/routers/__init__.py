"""One APIRouter per area: search (and rerank), qa, health (and metrics), indexes."""
