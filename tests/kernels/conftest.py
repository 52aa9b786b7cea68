"""The kernel tests run Triton through its CPU interpreter: set it before any test module imports
``sparsa.kernels`` (jit functions bind to the backend at import), whatever order pytest collects in."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
