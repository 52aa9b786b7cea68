"""Index management behind the API key: list, build (a background ``sparsa index`` job), swap."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from sparsa.api.deps import AdminKey, Jobs, State, run_blocking
from sparsa.api.schemas import (
    BuildJob,
    BuildRequest,
    ErrorBody,
    IndexList,
    LoadedIndex,
    StoredIndex,
    SwapRequest,
)
from sparsa.artifacts import read_manifest
from sparsa.errors import SparsaError

router = APIRouter(prefix="/indexes", tags=["indexes"], dependencies=[AdminKey],
                   responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 403: {"model": ErrorBody}})


def _stored(state) -> list[StoredIndex]:
    root = state.config.index_root
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []:
        try:
            found.append(StoredIndex(name=folder.name, kind=read_manifest(folder)["kind"], valid=True))
        except SparsaError as exc:
            found.append(StoredIndex(name=folder.name, kind=None, valid=False, detail=str(exc)))
    return found


@router.get("", response_model=IndexList, summary="Served indexes and the indexes stored on the server")
def list_indexes(state: State) -> IndexList:
    return IndexList(loaded=[LoadedIndex(**s.describe()) for s in state.indexes.values()], stored=_stored(state))


@router.post("/build", response_model=BuildJob, status_code=202, summary="Start building an index in the background")
def build(body: BuildRequest, jobs: Jobs) -> BuildJob:
    return BuildJob(**jobs.start(body.name, body.kind, body.dataset).describe())


@router.get("/jobs/{job_id}", response_model=BuildJob, responses={404: {"model": ErrorBody}})
def job(job_id: str, jobs: Jobs) -> BuildJob:
    try:
        return BuildJob(**jobs.get(job_id).describe())
    except KeyError:
        raise HTTPException(404, f"no build job {job_id!r}") from None


@router.post("/swap", response_model=LoadedIndex, summary="Serve a stored index for a retriever (checked first)",
             responses={409: {"model": ErrorBody}})
async def swap(body: SwapRequest, state: State) -> LoadedIndex:
    path = state.config.index_root / body.name
    if not path.is_dir():
        raise HTTPException(404, f"no stored index {body.name!r} (see GET /indexes)")
    served = await run_blocking(state, state.swap, body.retriever, path)
    return LoadedIndex(**served.describe())
