"""What every command shares: the console and dataset path resolution (index names:
``sparsa.config.index_path``)."""

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
