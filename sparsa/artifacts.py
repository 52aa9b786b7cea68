"""Artifacts on disk (indexes, passage stores, trained models): atomic publishing and manifests.

An artifact is a folder with a ``sparsa.json`` manifest written last. It is built in a hidden sibling
folder (``.<name>.building``, owned by one process) and renamed into place only when complete, so a
failed or killed job leaves the previously published artifact untouched. The manifest lists every
file's size and sha256, so a damaged artifact is refused rather than used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sparsa import __version__
from sparsa.errors import ConfigError, IndexCorruptError

logger = logging.getLogger(__name__)

MANIFEST = "sparsa.json"
_BUILDING = ".building"
_OWNER = "owner.pid"
# Kinds renamed since: manifests that say the old name are read as the new one.
OLD_KINDS = {"sparse": "splade"}  # learned-sparse indexes


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim_work_dir(work: Path, resume: bool) -> None:
    """Take the build folder: refuse if a live build owns it; keep its contents only to resume."""
    owner = work / _OWNER
    if owner.is_file():
        pid = int(owner.read_text() or 0)
        if pid != os.getpid() and _pid_alive(pid):
            raise ConfigError(f"another build of {work.name.removeprefix('.').removesuffix(_BUILDING)} "
                              f"is running (pid {pid}); wait for it or stop it")
    if work.exists() and not resume:
        logger.info("removing leftover of an interrupted build: %s", work)
        shutil.rmtree(work)
    elif work.exists():
        logger.info("resuming the interrupted build in %s", work)
    work.mkdir(exist_ok=True)
    owner.write_text(str(os.getpid()))


@contextmanager
def atomic_dir(final: str | Path, resume: bool = False) -> Iterator[Path]:
    """Yield the build folder ``.<name>.building``; on success it replaces ``final`` in one rename.

    With ``resume``, a folder left by a dead build is handed back as it is (the job decides what
    of it to reuse) and kept if this build fails too; otherwise it starts empty and is removed.
    """
    final = Path(final).expanduser().resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not (final / MANIFEST).is_file():
        raise IndexCorruptError(f"{final} exists but is not a sparsa index or artifact (no {MANIFEST}); "
                               "refusing to replace it")
    work = final.with_name(f".{final.name}{_BUILDING}")
    _claim_work_dir(work, resume)
    try:
        yield work
        if not (work / MANIFEST).is_file():
            raise RuntimeError(f"the build finished without writing {MANIFEST}")
        (work / _OWNER).unlink()
        if final.exists():
            retired = final.with_name(f".{final.name}.retired-{os.getpid()}")
            os.replace(final, retired)
            os.replace(work, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(work, final)
    except BaseException:
        if not resume:
            shutil.rmtree(work, ignore_errors=True)
        raise


def _file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, _OWNER)):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        files[str(path.relative_to(folder))] = {"bytes": path.stat().st_size, "sha256": digest}
    return files


def write_manifest(folder: Path, kind: str, config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Write ``sparsa.json`` (last step of a build): kind, config, version, and every file's checksum."""
    manifest = {
        "kind": kind,
        "config": config or {},
        "sparsa_version": __version__,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
        "files": _file_digests(folder),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def read_manifest(path: str | Path, verify: str = "size", kind: str | None = None) -> dict[str, Any]:
    """Read and check a manifest. ``verify``: "none", "size" (cheap) or "sha256" (full); ``kind``: expected."""
    folder = Path(path).expanduser()
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise IndexCorruptError(f"{folder}: not a sparsa index or artifact (no {MANIFEST}); "
                                "build one with 'sparsa index'")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        manifest["kind"] = OLD_KINDS.get(manifest["kind"], manifest["kind"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise IndexCorruptError(f"{manifest_path}: unreadable manifest ({exc})") from None
    if kind is not None and manifest["kind"] != kind:
        raise IndexCorruptError(f"{folder} holds a {manifest['kind']!r}, expected a {kind!r}")
    if verify != "none":
        for rel, expected in files.items():
            file = folder / rel
            if not file.is_file():
                raise IndexCorruptError(f"{folder}: file {rel} is missing; rebuild it")
            if file.stat().st_size != expected["bytes"]:
                raise IndexCorruptError(f"{folder}: file {rel} has the wrong size; rebuild it")
            if verify == "sha256" and hashlib.sha256(file.read_bytes()).hexdigest() != expected["sha256"]:
                raise IndexCorruptError(f"{folder}: file {rel} fails its checksum; rebuild it")
    return manifest
