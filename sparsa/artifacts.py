"""Artifacts on disk (indexes, passage stores, trained models): atomic publishing and manifests.

An artifact is a folder with a ``sparsa.json`` manifest written last. It is built in a hidden sibling
folder (``.<name>.building``, owned by one process) and renamed into place only when complete, so a
failed or killed job leaves the previously published artifact untouched. The manifest lists every
file's size and sha256, so a damaged artifact is refused rather than used, and only files inside the
folder: a manifest naming any other path is refused before that path is looked at.

Index manifests also record their corpus (``corpus_identity``: the dataset's name and a sha256 over its
sorted document ids), so a service can refuse an index of another collection. A process serving an
artifact holds a marker beside it (``hold_serving``); ``atomic_dir`` refuses to replace a folder that a
live process serves.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path, PurePosixPath
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


# -- serving markers ------------------------------------------------------------------------------
_SERVING_PREFIX = ".serving-"
_serving: dict[Path, int] = {}  # folders this process serves -> how many holders
_serving_lock = threading.Lock()


def _marker(folder: Path, pid: int) -> Path:
    return folder.with_name(f".{folder.name}{_SERVING_PREFIX}{pid}")


def hold_serving(folder: str | Path) -> Path:
    """Mark ``folder`` as served by this process (a ``.<name>.serving-<pid>`` file beside it) until
    ``release_serving``; builds refuse to replace a served folder. Returns the resolved folder."""
    folder = Path(folder).expanduser().resolve()
    with _serving_lock:
        _serving[folder] = _serving.get(folder, 0) + 1
        try:
            _marker(folder, os.getpid()).write_text(str(os.getpid()))
        except OSError as exc:  # a read-only index root: serving still works, unprotected
            logger.warning("could not mark %s as served: %s", folder, exc)
    return folder


def release_serving(folder: str | Path) -> None:
    folder = Path(folder).expanduser().resolve()
    with _serving_lock:
        left = _serving.get(folder, 0) - 1
        if left > 0:
            _serving[folder] = left
            return
        _serving.pop(folder, None)
        _marker(folder, os.getpid()).unlink(missing_ok=True)


def serving_pids(folder: str | Path) -> list[int]:
    """Live processes serving ``folder`` (markers of dead ones are removed)."""
    folder = Path(folder).expanduser().resolve()
    pids = []
    for marker in folder.parent.glob(f".{folder.name}{_SERVING_PREFIX}*"):
        suffix = marker.name.rsplit("-", 1)[-1]
        if not suffix.isdigit():
            continue
        pid = int(suffix)
        if pid == os.getpid() and folder not in _serving:
            marker.unlink(missing_ok=True)  # left by an earlier holder in this process
        elif pid == os.getpid() or _pid_alive(pid):
            pids.append(pid)
        else:
            marker.unlink(missing_ok=True)
    return sorted(pids)


@atexit.register
def _release_all() -> None:
    for folder in list(_serving):
        _marker(folder, os.getpid()).unlink(missing_ok=True)


# -- corpus identity --------------------------------------------------------------------------------
_corpus: ContextVar[dict[str, Any] | None] = ContextVar("sparsa_manifest_corpus", default=None)


def corpus_identity(doc_ids: Iterable[str], name: str | None = None) -> dict[str, Any]:
    """What an index was built from: the corpus name (its dataset folder; None if unknown), the number
    of documents and a sha256 over the sorted, newline-joined document ids (file order does not matter)."""
    ids = sorted(doc_ids)
    digest = hashlib.sha256("\n".join(ids).encode("utf-8", "surrogatepass")).hexdigest()
    return {"name": name, "documents": len(ids), "doc_ids_sha256": digest}


@contextmanager
def recording_corpus(identity: dict[str, Any] | None) -> Iterator[None]:
    """Manifests written inside this block (by any index backend) record ``identity`` as ``corpus``."""
    token = _corpus.set(identity)
    try:
        yield
    finally:
        _corpus.reset(token)


def corpus_mismatch(manifest: dict[str, Any], served: dict[str, Any]) -> str | None:
    """Why an index (its manifest) is not of the ``served`` corpus, or None when it is. A manifest
    without a corpus (built before identities were recorded) is not a mismatch: the caller warns."""
    built = manifest.get("corpus")
    if not isinstance(built, dict) or built.get("doc_ids_sha256") == served["doc_ids_sha256"]:
        return None

    def say(c: dict[str, Any]) -> str:
        return (f"{c.get('name') or 'an unnamed corpus'!r} ({c.get('documents', '?')} documents, "
                f"ids sha256 {str(c.get('doc_ids_sha256', '?'))[:12]})")

    return f"the index was built from {say(built)}, but this server serves the corpus {say(served)}"


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
    served = serving_pids(final) if final.exists() else []
    if served:
        raise ConfigError(f"{final.name} is being served (pid {', '.join(map(str, served))}); it is never "
                          "replaced in place: build under a new name and swap that in")
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


def file_sha256(path: Path) -> str:
    """Streamed: a multi-gigabyte document store or index segment is never read into memory whole."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file, hashed in threads (hashlib and reads let the GIL go): an index's
    two big arrays hash at once (about 0.06 s instead of 0.12 per 100k splade-tiny documents,
    index_harness_cpu.json)."""
    from concurrent.futures import ThreadPoolExecutor

    from sparsa.token_batches import available_cores

    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, _OWNER))
    workers = min(len(paths), available_cores(), 8)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            digests = list(pool.map(file_sha256, paths))
    else:
        digests = [file_sha256(p) for p in paths]
    return {str(path.relative_to(folder)): {"bytes": path.stat().st_size, "sha256": digest}
            for path, digest in zip(paths, digests)}


def write_manifest(folder: Path, kind: str, config: dict[str, Any] | None = None,
                   **extra: Any) -> dict[str, Any]:
    """Write ``sparsa.json`` (last step of a build): kind, config, version, the corpus (inside
    ``recording_corpus``, or ``corpus=`` given here) and every file's checksum."""
    corpus = extra.pop("corpus", None) or _corpus.get()
    manifest = {
        "kind": kind,
        "config": config or {},
        "sparsa_version": __version__,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"corpus": corpus} if corpus else {}),
        **extra,
        "files": _file_digests(folder),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def _confine(folder: Path, rel: Any, manifest_path: Path) -> None:
    """A manifest may only name files inside its folder: relative, no '..', no link leading out."""
    parts = PurePosixPath(rel).parts if isinstance(rel, str) and rel else ()
    outside = (not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel or "\0" in rel
               or not (folder / rel).resolve().is_relative_to(folder.resolve()))
    if outside:
        raise IndexCorruptError(f"{manifest_path}: the manifest names a file outside its folder "
                                f"({str(rel)[:80]!r}); refusing the index")


def read_manifest(path: str | Path, verify: str = "size", kind: str | None = None) -> dict[str, Any]:
    """Read and check a manifest. ``verify``: "none", "size" (cheap) or "sha256" (full);
    ``kind``: expected."""
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
    if not isinstance(files, dict):
        raise IndexCorruptError(f"{manifest_path}: unreadable manifest (files is not a mapping)")
    for rel in files:
        _confine(folder, rel, manifest_path)
    if verify != "none":
        for rel, expected in files.items():
            file = folder / rel
            if not file.is_file():
                raise IndexCorruptError(f"{folder}: file {rel} is missing; rebuild it")
            if file.stat().st_size != expected["bytes"]:
                raise IndexCorruptError(f"{folder}: file {rel} has the wrong size; rebuild it")
            if verify == "sha256" and file_sha256(file) != expected["sha256"]:
                raise IndexCorruptError(f"{folder}: file {rel} fails its checksum; rebuild it")
    return manifest
