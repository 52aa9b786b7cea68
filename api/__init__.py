"""The REST service (FastAPI): search, rerank, QA, health, metrics, index management and a web page.

Names load on first use, so ``import sparsa.api`` needs neither FastAPI nor torch.
"""

from __future__ import annotations

if __name__ != "sparsa.api":  # a bare `import api` run from the repo root: see sparsa/toplevel.py
    from sparsa.toplevel import defer_to_installed

    defer_to_installed(__name__, __file__)

from sparsa.lazy import lazy_exports

_EXPORTS = {
    "create_app": "sparsa.api.app",
    "ServiceConfig": "sparsa.api.settings",
    "config_from_env": "sparsa.api.settings",
    "ServiceState": "sparsa.api.state",
}

__all__ = ["ServiceConfig", "ServiceState", "config_from_env", "create_app"]

__getattr__ = lazy_exports("sparsa.api", _EXPORTS)
