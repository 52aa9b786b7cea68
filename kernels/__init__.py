"""Triton kernels for the long-context reader, each with a plain PyTorch reference.

Imports only torch and triton: this package must load on the GPU machine, which has no Java.
"""

from __future__ import annotations

if __name__ != "sparsa.kernels":  # a bare `import kernels` run from the repo root: see sparsa/toplevel.py
    from sparsa.toplevel import defer_to_installed

    defer_to_installed(__name__, __file__)
