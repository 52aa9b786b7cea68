"""Progress bars for long loops: on by default when the sparsa logger is at INFO or below."""

from __future__ import annotations

import logging
from typing import Any


def progress_bar(total: int | None, desc: str, unit: str = "it", show: bool | None = None) -> Any:
    """A ``tqdm`` bar (with rate and ETA) or a silent stand-in; use as a context manager."""
    from tqdm.auto import tqdm

    if show is None:
        show = logging.getLogger("sparsa").isEnabledFor(logging.INFO)
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, dynamic_ncols=True, smoothing=0.1)
