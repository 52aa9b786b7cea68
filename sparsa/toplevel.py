"""Keep the card's top-level folders (``api/``, ``kernels/``, ...) from posing as top-level modules.

Each folder is a subpackage of sparsa (``kernels/`` installs as ``sparsa.kernels``; see
``[tool.setuptools.package-dir]``). But Python started from the repo root (``python -m ...``,
``python -c ...``, ``python -m pytest``) puts the root first on ``sys.path``, so a bare ``import kernels``
would find the repo's folder before an installed distribution of that name: transformers 5 imports
Hugging Face's ``kernels`` distribution, and got our Triton folder instead.

A namespace layout cannot fix this here (setuptools' editable finder does not resolve a namespace
subpackage mapped outside its parent), and ``PYTHONSAFEPATH`` only helps those who set it. So each folder's
``__init__`` calls :func:`defer_to_installed` when it is imported under its bare name: the installed
distribution takes its place in ``sys.modules`` (the import system returns what ``sys.modules`` holds once
the module has run), or, with none installed, the import fails as it would from any other folder.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path


def defer_to_installed(name: str, init_file: str) -> None:
    """Load the installed top-level module ``name`` in place of the repo folder whose ``__init__`` is running."""
    repo_root = Path(init_file).resolve().parent.parent
    elsewhere = [entry for entry in sys.path if Path(entry or ".").resolve() != repo_root]
    spec = importlib.machinery.PathFinder.find_spec(name, elsewhere)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(
            f"No module named {name!r} (the repo's {name}/ folder is the subpackage sparsa.{name})", name=name
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
