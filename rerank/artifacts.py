"""Reranker artifacts on disk: folders built atomically, described by a ``sparsa.json`` manifest.

A writer fills ``.<name>.building-<pid>`` beside the target, writes ``sparsa.json`` last and
renames the folder into place, so a reader sees either the old artifact or the complete new one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sparsa import __version__
from sparsa.errors import IndexCorruptError

MANIFEST = "sparsa.json"


@contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """Yield an empty work folder; on success it replaces ``final`` (which must be ours, if present)."""
    final = Path(final).expanduser().resolve()
    if final.exists() and not (final / MANIFEST).is_file():
        raise IndexCorruptError(f"{final} exists but has no {MANIFEST}; refusing to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.with_name(f".{final.name}.building-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
        if not (work / MANIFEST).is_file():
            raise RuntimeError(f"the writer finished without writing {MANIFEST}")
        if final.exists():
            retired = final.with_name(f".{final.name}.retired-{os.getpid()}")
            os.replace(final, retired)
            os.replace(work, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_manifest(folder: Path, kind: str, **fields: Any) -> dict[str, Any]:
    """Write ``sparsa.json`` (call it last): kind, sparsa version, time, and the given fields."""
    record = {"kind": kind, "sparsa_version": __version__,
              "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
    (folder / MANIFEST).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def read_manifest(folder: str | Path, kind: str) -> dict[str, Any]:
    """The manifest of a folder written by :func:`write_manifest` with this ``kind``."""
    path = Path(folder).expanduser() / MANIFEST
    if not path.is_file():
        raise IndexCorruptError(f"{path.parent} is not a sparsa {kind} folder (no {MANIFEST})")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise IndexCorruptError(f"{path}: unreadable manifest ({exc})") from None
    if record.get("kind") != kind:
        raise IndexCorruptError(f"{path.parent} holds a {record.get('kind')!r}, expected a {kind!r}")
    return record
