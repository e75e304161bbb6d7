"""The HTTP API (``kb serve``): ask, search, reindex and status over JSON, for apps in any language.

    from kb import KnowledgeBase
    from kb.api import create_app
    import uvicorn

    kb = KnowledgeBase.open("indexes/handbook")
    uvicorn.run(create_app(kb, docs="docs/"), host="127.0.0.1", port=8000)

Every route but ``/health`` needs an API key (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``) from
``settings.api_keys``: ``read`` keys ask, search and read the status, ``admin`` keys also reindex.
Errors are JSON: ``{"error": CODE, "message": TEXT, "fields": [{"field": PATH, "message": TEXT}]}``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from kb.acl import Principal
from kb.citations import Answer
from kb.errors import KbError
from kb.knowledge_base import KnowledgeBase, ReindexJob
from kb.settings import ApiKey, RetrievalMode, Role

FilterValue = str | int | bool | list[str] | list[int]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=100_000, description="Question or keywords.")
    k: int = Field(5, ge=1, le=100, description="Number of chunks to return.")
    filters: dict[str, FilterValue] = Field(default_factory=dict, description="Front-matter field → value(s).")
    mode: RetrievalMode | None = Field(None, description="hybrid (default), dense or bm25.")


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=100_000)
    filters: dict[str, FilterValue] = Field(default_factory=dict)
    stream: bool = Field(False, description="Server-sent events: 'token' events, then one 'answer' event.")


class ReindexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    full: bool = Field(False, description="Rebuild everything into a new collection, switched in when done.")
    dry_run: bool = Field(False, description="Only report what would change.")


class ApiError(Exception):
    """An error answered as JSON with ``status``."""

    def __init__(self, status: int, code: str, message: str, fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or []


class ReindexRun:
    """One reindex started over HTTP."""

    def __init__(self, job: ReindexJob, options: dict[str, Any]) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.job, self.options, self.started_at = job, options, time.time()

    def as_dict(self) -> dict[str, Any]:
        job = self.job
        state = "running" if job.running else ("failed" if job.error is not None else "done")
        out: dict[str, Any] = {
            "id": self.id,
            "state": state,
            "options": self.options,
            "started_at": self.started_at,
            "progress": {"done": job.done, "total": job.total, "current": job.current},
        }
        if job.report is not None:
            out["report"] = job.report.as_dict()
            out["summary"] = job.report.summary()
        if job.error is not None:
            out["error"] = f"{type(job.error).__name__}: {job.error}"
        return out


def caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> ApiKey:
    """The key this request presents (``Authorization: Bearer KEY`` or ``X-API-Key``)."""
    presented = x_api_key or (authorization or "").removeprefix("Bearer ").strip()
    if not presented:
        if request.app.state.allow_anonymous:
            return ApiKey.model_construct(key="", role=Role.READ, name="anonymous", groups=[])
        raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key'")
    for key in request.app.state.keys:
        if secrets.compare_digest(key.key.encode(), presented.encode()):
            return key
    raise ApiError(401, "unauthorized", "unknown API key")


def admin(key: Annotated[ApiKey, Depends(caller)]) -> ApiKey:
    if key.role is not Role.ADMIN:
        raise ApiError(403, "forbidden", f"key {key.name or '(unnamed)'} is a read key; reindex needs an admin key")
    return key


def principal(key: ApiKey) -> Principal:
    """The reader behind a key: its groups (``*`` reads everything; no groups, only public documents)."""
    return Principal(groups=tuple(key.groups), name=key.name)


Reader = Annotated[ApiKey, Depends(caller)]
Admin = Annotated[ApiKey, Depends(admin)]


def create_app(kb: KnowledgeBase, docs: str | Path | None = None, allow_anonymous: bool = False) -> FastAPI:
    """The FastAPI app serving ``kb``; ``docs`` is the folder ``POST /reindex`` mirrors.

    Without ``settings.api_keys`` every request is refused, unless ``allow_anonymous`` (then every caller
    is a read-only anonymous user; reindex stays closed).
    """
    app = FastAPI(
        title="kb",
        version="1",
        description="Answers grounded in your documents, with citations. Send the key as 'Authorization: Bearer KEY'.",
    )
    app.state.keys = list(kb.settings.api_keys)
    app.state.allow_anonymous = allow_anonymous
    runs: dict[str, ReindexRun] = {}
    llm_lock = threading.Lock()  # one local generator instance: llama.cpp is not re-entrant

    def generating() -> AbstractContextManager[Any]:
        return llm_lock if kb.llm is not None else nullcontext()  # extractive answers run in parallel

    reindexing = threading.Lock()

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        body = {"error": exc.code, "message": exc.message, "fields": exc.fields}
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"field": ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body", "message": err["msg"]}
            for err in exc.errors()
        ]
        message = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return JSONResponse({"error": "invalid_request", "message": message, "fields": fields}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": "http_error", "message": str(exc.detail), "fields": []}, exc.status_code)

    @app.exception_handler(KbError)
    async def _kb_error(_: Request, exc: KbError) -> JSONResponse:
        return JSONResponse({"error": "bad_request", "message": str(exc), "fields": []}, status_code=400)

    @app.get("/health", summary="Liveness: the process answers and the store is reachable.")
    def health() -> dict[str, Any]:
        kb.store.count({"doc_id": ["__health__"]})
        return {"status": "ok"}

    @app.get("/status", summary="Documents, chunks, store and settings (secrets masked).")
    def status(key: Reader) -> dict[str, Any]:
        state = asdict(kb.status())
        readable = principal(key).readable()
        if readable is not None:  # counts of what this key may read, not of the whole index
            state["chunks"] = kb.store.count({"acl": readable})
            state["documents"] = sum(1 for e in kb.manifest.documents.values() if set(e.acl or ()) & set(readable))
        return state

    @app.post("/search", summary="The k chunks that best match the query, among documents the key may read.")
    def search(body: SearchRequest, key: Reader) -> dict[str, Any]:
        started = time.perf_counter()
        hits = kb.search(body.query, k=body.k, filters=body.filters or None, mode=body.mode, user=principal(key))
        return {"hits": [asdict(h) for h in hits], "took_ms": (time.perf_counter() - started) * 1e3}

    @app.post("/ask", summary="A cited answer, or a refusal when the documents do not say.")
    def ask(body: AskRequest, key: Reader) -> Any:
        filters = body.filters or None
        if not body.stream:
            with generating():
                return kb.ask(body.question, filters=filters, user=principal(key)).as_dict()
        engine = kb.answer_engine(filters, principal(key))
        engine.check(body.question)  # bad questions get a 400 before the stream starts

        def events() -> Iterator[str]:
            with generating():
                try:
                    for event in engine.stream(body.question):
                        if isinstance(event, Answer):
                            yield _sse("answer", event.as_dict())
                        else:
                            yield _sse("token", {"text": event})
                except Exception as exc:  # the status line is already sent: report in-band
                    yield _sse("error", {"error": type(exc).__name__, "message": str(exc)})

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/reindex", status_code=202, summary="Mirror the docs folder in the background (admin).")
    def reindex(body: ReindexRequest, _: Admin) -> dict[str, Any]:
        if docs is None:
            raise ApiError(409, "no_docs_folder", "this server was started without --docs; it cannot reindex")
        with reindexing:
            running = [run for run in runs.values() if run.job.running]
            if running:
                raise ApiError(409, "reindex_running", f"reindex {running[0].id} is still running")
            options = body.model_dump()
            run = ReindexRun(kb.reindex_in_background(docs, **options), options)
            runs[run.id] = run
        return {**run.as_dict(), "status_url": f"/reindex/{run.id}"}

    @app.get("/reindex/{run_id}", summary="Progress and report of a reindex (admin).")
    def reindex_status(run_id: str, _: Admin) -> dict[str, Any]:
        run = runs.get(run_id)
        if run is None:
            raise ApiError(404, "not_found", f"no reindex with id {run_id!r} (ids are kept until the server restarts)")
        return run.as_dict()

    return app


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
