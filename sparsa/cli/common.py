"""What every command shares: the console, dataset and index path resolution."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from sparsa.config import load_settings
from sparsa.errors import DataFormatError

# Messages carry paths, queries and generated text: print them literally (no Rich markup, no :emoji: codes).
console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)  # stdout stays for data
out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)


def dataset_path(name_or_path: str) -> Path:
    """A dataset folder: a path, or a name under the data dir (``scifact`` -> shared/data/scifact)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    under_data = load_settings().data_dir / name_or_path
    if under_data.exists():
        return under_data
    raise DataFormatError(path, f"dataset not found (also looked in {load_settings().data_dir})")


def index_path(name_or_path: str) -> Path:
    """An index folder: a path, or a name under ``$SPARSA_HOME/indexes``."""
    path = Path(name_or_path).expanduser()
    if path.exists() or "/" in name_or_path:
        return path
    return load_settings().index_dir / name_or_path
