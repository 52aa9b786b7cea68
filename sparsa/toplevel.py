"""Keep the card's top-level folders (``api/``, ``kernels/``, ...) from posing as top-level modules.

Each folder is a subpackage of sparsa (``kernels/`` installs as ``sparsa.kernels``; see
``[tool.setuptools.package-dir]``). But Python started from the repo root (``python -m ...``,
``python -c ...``, ``python -m pytest``) puts the root first on ``sys.path``, so a bare ``import kernels``
would find the repo's folder before an installed distribution of that name: transformers 5 imports
Hugging Face's ``kernels`` distribution, and got our Triton folder instead.

A namespace layout cannot fix this here (setuptools' editable finder does not resolve a namespace
subpackage mapped outside its parent), and ``PYTHONSAFEPATH`` only helps those who set it. So each folder's
``__init__`` calls :func:`defer_to_installed` when it is imported under its bare name, and something else
takes its place in ``sys.modules`` (the import system returns what ``sys.modules`` holds once the module has
run): the installed distribution of that name, or, with none installed, an empty namespace package, which is
what Python gives for a folder without ``__init__.py``. Never sparsa's code. The empty package (no
``__file__``, no ``__version__``) is what dependency probes expect of a folder shadowing nothing:
transformers' ``_is_package_available`` imports a package it finds no metadata for and reads exactly
that as "not installed".
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path


def defer_to_installed(name: str, init_file: str) -> None:
    """Put the installed top-level module ``name`` (or an empty namespace package) in place of the repo folder
    whose ``__init__`` is running."""
    repo_root = Path(init_file).resolve().parent.parent
    elsewhere = [entry for entry in sys.path if Path(entry or ".").resolve() != repo_root]
    spec = importlib.machinery.PathFinder.find_spec(name, elsewhere)
    if spec is None or spec.loader is None:
        placeholder = types.ModuleType(name, f"Not a module: the repo's {name}/ folder is sparsa.{name}.")
        placeholder.__file__ = None
        placeholder.__path__ = []  # a package with no portions: `import {name}.x` finds nothing
        placeholder.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = placeholder
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
