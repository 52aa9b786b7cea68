"""Typed errors. The CLI prints ``error: <message>``; the API maps input errors to 4xx."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class SparsaError(Exception):
    """Base class for every error sparsa raises on purpose."""


class ConfigError(SparsaError):
    """A setting or argument has a value sparsa cannot use."""


class CorpusMismatchError(ConfigError):
    """An index returned document ids the corpus lacks: the two come from different collections."""


class DataFormatError(SparsaError):
    """An input file is malformed; the message names the file and, where known, the line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class UnknownNameError(SparsaError, KeyError):
    """A name is not in a registry; the message lists the known names and the closest one."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        self.message = f"unknown {kind} {name!r}; known: {', '.join(known) or '(none)'}.{hint}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


class ModelNotFoundError(SparsaError):
    """A model name is neither a registry entry, a local folder, nor an available hub id."""


class IndexCorruptError(SparsaError):
    """An index folder is incomplete or fails its integrity check."""


class MissingDependencyError(SparsaError, ImportError):
    """An optional dependency is not installed; the message has the install command."""


def require(module: str, extra: str):
    """Import an optional dependency, or raise MissingDependencyError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module!r} is needed here but not installed: pip install 'sparsa[{extra}]' ({exc})"
        ) from exc
