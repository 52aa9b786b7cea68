"""What every command shares: the console and dataset path resolution (index names:
``sparsa.config.index_path``)."""

from __future__ import annotations

from rich.console import Console

from sparsa.config import dataset_path  # noqa: F401 - the commands' import of it

# Messages carry paths, queries and generated text: print them literally (no Rich markup, no :emoji: codes).
# stdout stays for data
console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)
out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
