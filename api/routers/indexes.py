"""Index management behind the API key: list, build (a supervised background job), swap."""

from __future__ import annotations

from typing import Literal

import anyio
from fastapi import APIRouter, HTTPException, Query

from sparsa.api.deps import AdminKey, Jobs, State
from sparsa.api.schemas import (
    BuildJob,
    BuildRequest,
    IndexList,
    LoadedIndex,
    StoredIndex,
    SwapRequest,
    error_responses,
)
from sparsa.artifacts import read_manifest
from sparsa.errors import SparsaError

router = APIRouter(prefix="/indexes", tags=["indexes"], dependencies=[AdminKey],
                   responses=error_responses(401, 403, 429))


def _stored(state, verify: str) -> list[StoredIndex]:
    root = state.config.index_root
    found = []
    for folder in (sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
                   if root.is_dir() else []):
        try:
            manifest = read_manifest(folder, verify=verify)
            found.append(StoredIndex(name=folder.name, kind=manifest["kind"], valid=True, checked=verify,
                                     corpus=manifest.get("corpus") if isinstance(manifest.get("corpus"), dict)
                                     else None))
        except SparsaError as exc:
            found.append(StoredIndex(name=folder.name, kind=None, valid=False, checked=verify,
                                     detail=str(exc)))
    return found


@router.get("", response_model=IndexList, summary="Served indexes and the indexes stored on the server")
async def list_indexes(state: State, verify: Literal["size", "sha256"] = Query(
        "size", description="size: compare file sizes (fast); sha256: every checksum (reads every file)"),
) -> IndexList:
    stored = await anyio.to_thread.run_sync(_stored, state, verify)
    loaded = [LoadedIndex(**s.describe()) for s in list(state.indexes.values())]
    return IndexList(loaded=loaded, stored=stored)


@router.post("/build", response_model=BuildJob, status_code=202,
             summary="Start building an index in the background",
             responses=error_responses(400, 408, 409, 413, 422))
async def build(body: BuildRequest, state: State, jobs: Jobs) -> BuildJob:
    served = [s.path for s in list(state.indexes.values())]
    job = await anyio.to_thread.run_sync(
        lambda: jobs.start(body.name, body.kind, body.dataset, body.replace, served, body.model))
    return BuildJob(**jobs.describe(job))


@router.get("/jobs/{job_id}", response_model=BuildJob, responses=error_responses(404, 422))
async def job(job_id: str, jobs: Jobs) -> BuildJob:
    try:
        found = await anyio.to_thread.run_sync(jobs.get, job_id)
    except KeyError:
        raise HTTPException(404, f"no build job {job_id!r}") from None
    return BuildJob(**jobs.describe(found))


@router.post("/swap", response_model=LoadedIndex,
             summary="Serve a stored index for a retriever (checked first)",
             description="Opens the stored index, checks every file's checksum and that it was built from "
                         "the served corpus, then serves it; any refusal leaves the old index serving.",
             responses=error_responses(400, 404, 408, 409, 413, 422, 503))
async def swap(body: SwapRequest, state: State) -> LoadedIndex:
    path = state.config.index_root / body.name
    if not path.is_dir():
        raise HTTPException(404, f"no stored index {body.name!r} (see GET /indexes)")
    # No time limit: a swap that answered 504 would still complete afterwards. Swaps run one at a time.
    served = await anyio.to_thread.run_sync(state.swap, body.retriever, path)
    return LoadedIndex(**served.describe())
