"""The HTTP API (``kb serve``): ask, search, reindex and status over JSON, for apps in any language.

    from kb import KnowledgeBase
    from kb.api import create_app
    import uvicorn

    kb = KnowledgeBase.open("indexes/handbook")
    uvicorn.run(create_app(kb, docs="docs/"), host="127.0.0.1", port=8000)

``GET /`` is a web page over these endpoints (ask, read the cited sources, search, status and reindex), and
``/docs`` the OpenAPI page, both served from the package (no CDN; see :mod:`kb.web`).

Every route but ``/health`` and the pages needs an API key (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``)
from ``settings.api_keys``: ``read`` keys ask, search and read the status, ``admin`` keys also reindex.
Errors are JSON: ``{"error": CODE, "message": TEXT, "fields": [{"field": PATH, "message": TEXT}]}``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from kb.acl import Principal
from kb.citations import Answer
from kb.errors import (
    ConfigError,
    IndexDamagedError,
    IndexLockedError,
    KbError,
    LLMUnavailableError,
    ModelNotAvailableError,
)
from kb.knowledge_base import KnowledgeBase, ReindexJob
from kb.records import ChunkRecord
from kb.settings import ApiKey, RetrievalMode, Role, model_shown_to_readers
from kb.store.base import check_filter_values, payload_key
from kb.web import mount_web
from kb.web.view import DEFAULT_AROUND, MAX_AROUND, document_view, facet_values, readable_scope

log = logging.getLogger(__name__)
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
FilterValue = StrictStr | StrictInt | StrictBool | list[StrictStr] | list[StrictInt] | list[StrictBool]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    @field_validator("filters", mode="after", check_fields=False)
    @classmethod
    def _storable(cls, filters: dict[str, Any]) -> dict[str, Any]:
        for key, value in filters.items():
            try:
                payload_key(key)
                check_filter_values(key, value if isinstance(value, list) else [value])
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return filters


class SearchRequest(_Strict):
    query: StrictStr = Field(min_length=1, max_length=100_000, description="Question or keywords.")
    k: StrictInt = Field(5, ge=1, le=100, description="Number of chunks to return.")
    filters: dict[str, FilterValue] = Field(default_factory=dict, description="Front-matter field → value(s).")
    mode: RetrievalMode | None = Field(None, description="hybrid (default), dense or bm25.")


class AskRequest(_Strict):
    question: StrictStr = Field(min_length=1, max_length=100_000)
    filters: dict[str, FilterValue] = Field(default_factory=dict)
    stream: StrictBool = Field(
        False,
        description="Server-sent events: 'token' events, then one 'answer' event. An 'answer' event with "
        "refused: true takes back the tokens before it (an answer no source supports is withheld after it streamed).",
    )


class ChatMessageModel(_Strict):
    role: str = Field("user", pattern="^(user|assistant)$")
    content: StrictStr = Field(min_length=1, max_length=100_000)


class ChatRequest(_Strict):
    messages: list[ChatMessageModel] = Field(min_length=1, max_length=50, description="The conversation, oldest first.")
    filters: dict[str, FilterValue] = Field(default_factory=dict)
    stream: StrictBool = Field(False, description="Server-sent events, as for /ask.")

    @field_validator("messages", mode="after")
    @classmethod
    def _ends_with_a_question(cls, messages: list[ChatMessageModel]) -> list[ChatMessageModel]:
        if messages and messages[-1].role != "user":
            raise ValueError("the last message must be the user's question")
        return messages


class ReindexRequest(_Strict):
    source: StrictStr | None = Field(None, description="The source to reindex; none: every source.")
    full: StrictBool = Field(False, description="Rebuild everything into a new collection, switched in when done.")
    dry_run: StrictBool = Field(False, description="Only report what would change.")
    allow_mass_delete: StrictBool = Field(False, description="Delete more than max_delete_fraction of a source.")
    repair: StrictBool = Field(False, description="Re-read and re-embed what a damaged store lost.")
    verify: StrictBool = Field(
        False, description="Hash every file (no size+mtime fast path) and parse again files that failed before."
    )


class ApiError(Exception):
    """An error answered as JSON with ``status``."""

    def __init__(self, status: int, code: str, message: str, fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or []


# Errors that are the server's, not the caller's: a status that says so, and a message without the endpoint,
# path or model behind it (read keys may not see those); the server log keeps the details.
SERVER_FAULTS: dict[type[KbError], tuple[int, str, str]] = {
    LLMUnavailableError: (502, "llm_unavailable", "the answer generator did not respond; the server log says why"),
    ModelNotAvailableError: (
        503,
        "model_unavailable",
        "a model the server needs is missing; the server log says which",
    ),
    IndexLockedError: (503, "index_busy", "the index is held by another writer; try again shortly"),
    IndexDamagedError: (503, "index_damaged", "the index is damaged; an administrator must repair it (kb status)"),
}


BODY_NOT_PARSED = "There was an error parsing the body"  # FastAPI's detail when json.loads itself raised


def error_response(exc: KbError) -> tuple[int, dict[str, str]]:
    """The HTTP status and ``{"error", "message"}`` for a kb error: the caller's fault is a 400 that says what
    to change; the server's is a 5xx from :data:`SERVER_FAULTS`, logged with its details."""
    fault = next((v for k, v in SERVER_FAULTS.items() if isinstance(exc, k)), None)
    if fault is None:
        return 400, {"error": "bad_request", "message": str(exc)}
    status, code, message = fault
    log.warning("%s: %s", code, exc)
    return status, {"error": code, "message": message}


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
    """The key this request presents (``Authorization: Bearer KEY``, the scheme in any case, or ``X-API-Key``)."""
    presented = x_api_key or ""
    if not presented and authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise ApiError(401, "unauthorized", "malformed Authorization header: send 'Authorization: Bearer KEY'")
        presented = credentials.strip()
    if not presented:
        if request.app.state.allow_anonymous:
            return ApiKey.model_construct(key="", role=Role.READ, name="anonymous", groups=[])
        raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key'")
    for key in request.app.state.keys:
        if secrets.compare_digest(key.key.get_secret_value().encode(), presented.encode()):
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


def cap_malloc_arenas(arenas: int = 2) -> bool:
    """Let every thread of this process share ``arenas`` glibc malloc arenas; call before threads start.

    A server answers each request on one of ~20 worker threads, and glibc gives each thread an arena of its own
    (up to 8 per core) that keeps its high-water mark after the request frees its memory: the resident set
    steps up over the first few thousand requests as each arena meets its peak (``kb serve``: +15 MB of heap
    over 4,500 requests, the Python heap flat; capped at 2, +0.1 MB after the first 1,000 —
    ``evals/reports/soak-http*.md``). Returns whether the cap was set: not on other C libraries, and not when
    ``MALLOC_ARENA_MAX`` already says what the operator wants.
    """
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # musl and others: no libc.so.6, or no mallopt
        return False


def create_app(kb: KnowledgeBase, docs: str | Path | None = None, allow_anonymous: bool = False) -> FastAPI:
    """The FastAPI app serving ``kb``; ``docs`` (optional) is registered as a source ``POST /reindex`` mirrors
    with the index's other sources.

    Without ``settings.api_keys`` every request is refused, unless ``allow_anonymous`` (then every caller
    is a read-only anonymous user; reindex stays closed). A generator the settings cannot build (the openai
    backend without ``llm_model``) is a :class:`ConfigError` here, at start-up, not a failed request later.
    """
    _ = kb.llm  # built, not loaded: the local model loads on the first answer
    app = FastAPI(
        title="kb",
        version="1",
        description="Answers grounded in your documents, with citations. Send the key as 'Authorization: Bearer KEY'.",
        docs_url=None,  # kb.web serves /docs from vendored Swagger UI assets: FastAPI's loads them from a CDN
        redoc_url=None,
    )
    app.add_middleware(_AssumeJson)
    app.state.keys = list(kb.settings.api_keys)
    app.state.allow_anonymous = allow_anonymous
    docs_source = kb.source_for_folder(docs).name if docs is not None else None
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
        fields = [_field_error(err) for err in exc.errors()]
        message = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return JSONResponse({"error": "invalid_request", "message": message, "fields": fields}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == BODY_NOT_PARSED:  # not UTF-8, or nested past the parser
            field = {"field": "body", "message": "not readable as JSON: send a UTF-8 JSON object"}
            return JSONResponse({"error": "invalid_request", "message": field["message"], "fields": [field]}, 422)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": code, "message": str(exc.detail), "fields": []}, exc.status_code, headers=exc.headers
        )

    @app.exception_handler(KbError)
    async def _kb_error(_: Request, exc: KbError) -> JSONResponse:
        status, body = error_response(exc)
        return JSONResponse({**body, "fields": []}, status_code=status)

    @app.get("/health", summary="Liveness: the process answers and the store is reachable.")
    def health() -> dict[str, Any]:
        kb.store.count({"doc_id": ["__health__"]})
        return {"status": "ok"}

    @app.get("/status", summary="Documents and chunks the key may read; admin keys also see store, sources, settings.")
    def status(key: Reader) -> dict[str, Any]:
        readable = principal(key).readable()
        me = {"name": key.name, "role": key.role.value, "groups": list(key.groups)}  # what the page may offer
        if key.role is Role.ADMIN and readable is None:
            return {**asdict(kb.status()), "caller": me}
        documents = kb.manifest.snapshot()  # replaced, never mutated, by a running reindex
        state = kb.status()
        visible = [e for e in documents.values() if readable is None or set(e.acl or ()) & set(readable)]
        return {
            "documents": len(visible),
            "chunks": kb.store.count({"acl": readable} if readable is not None else None),
            "sources": sorted({e.source for e in visible if e.source}),
            "embedder": {
                "name": model_shown_to_readers(str(state.embedder.get("name", ""))),
                "dimension": state.embedder.get("dimension"),
            },
            "chunking": state.chunking,
            "reranker": {"active": state.reranker["active"]},
            "updated_at": state.updated_at,
            "settings": kb.settings.public_dump(full=False),
            "caller": me,
        }

    @app.post("/search", summary="The k chunks that best match the query, among documents the key may read.")
    def search(body: SearchRequest, key: Reader) -> dict[str, Any]:
        started = time.perf_counter()
        hits = kb.search(body.query, k=body.k, filters=body.filters or None, mode=body.mode, user=principal(key))
        return {"hits": [asdict(h) for h in hits], "took_ms": (time.perf_counter() - started) * 1e3}

    @app.post("/ask", summary="A cited answer, or a refusal when the documents do not say.")
    def ask(body: AskRequest, key: Reader) -> Any:
        return answer(body.question, body.filters or None, body.stream, key)

    @app.post("/chat", summary="Answer the last question of a conversation (follow-ups are made standalone).")
    def chat(body: ChatRequest, key: Reader) -> Any:
        messages = [m.model_dump() for m in body.messages]
        with generating():
            question = kb.standalone_question(messages)
        return answer(question, body.filters or None, body.stream, key, also=[messages[-1]["content"]])

    def answer(
        question: str, filters: dict[str, Any] | None, stream: bool, key: ApiKey, also: list[str] | None = None
    ) -> Any:
        engine = kb.answer_engine(filters, principal(key))
        if not stream:
            with generating():
                return engine.answer(question, also=also or ()).as_dict()
        engine.check(question)  # bad questions get a 400 before the stream starts

        def events() -> Iterator[str]:
            with generating():
                try:
                    for event in engine.stream(question, also or ()):
                        if isinstance(event, Answer):
                            yield _sse("answer", event.as_dict())
                        else:
                            yield _sse("token", {"text": event})
                except KbError as exc:  # the status line is already sent: report in-band
                    yield _sse("error", error_response(exc)[1])
                except Exception:
                    log.exception("streamed answer failed")  # the details stay in the server log
                    yield _sse("error", {"error": "internal_error", "message": "the answer failed; see the server log"})

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    facets_cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}

    @app.get("/facets", summary="Filter choices: the values of the indexed front-matter fields the key may read.")
    def facets(key: Reader) -> dict[str, Any]:
        readable = principal(key).readable()
        fields = list(kb.settings.indexed_fields)
        # One pass over the readable chunks per index version and reader groups, not per page load.
        cache_key = (tuple(readable) if readable is not None else None, kb.manifest.updated_at, tuple(fields))
        if cache_key not in facets_cache:
            if len(facets_cache) > 64:
                facets_cache.clear()
            chunks = (ChunkRecord.from_payload(p.payload) for p in kb.store.scroll(readable_scope(readable)))
            facets_cache[cache_key] = facet_values(chunks, fields)
        return {"fields": facets_cache[cache_key]}

    @app.get(
        "/documents/{doc_id:path}",
        summary="A document's text around a cited chunk, as readable blocks (what the web page's source view shows).",
    )
    def document(
        doc_id: str,
        key: Reader,
        chunk: Annotated[str | None, Query(max_length=200, description="Point id of the cited chunk.")] = None,
        start: Annotated[int | None, Query(ge=0, le=2**53, description="Cited span: first char offset.")] = None,
        end: Annotated[int | None, Query(ge=0, le=2**53, description="Cited span: end char offset.")] = None,
        around: Annotated[int, Query(ge=0, le=MAX_AROUND, description="Chunks shown on each side.")] = DEFAULT_AROUND,
    ) -> dict[str, Any]:
        if (start is None) != (end is None) or (start is not None and end is not None and end < start):
            raise ApiError(422, "invalid_request", "start and end: give both, with start <= end",
                           [{"field": "query.end", "message": "expected start <= end, both or neither"}])  # fmt: skip
        entry = kb.manifest.snapshot().get(doc_id)
        cited = (start, end) if start is not None and end is not None else None
        view = document_view(
            kb.store, doc_id, principal(key).readable(), chunk, cited, around, entry.doc_hash if entry else ""
        )
        if view is None:  # the same answer for a forbidden document as for a missing one
            what = f"chunk {chunk!r} of document {doc_id!r}" if chunk else f"document {doc_id!r}"
            raise ApiError(404, "not_found", f"no {what} that this key may read")
        return view

    @app.post("/reindex", status_code=202, summary="Mirror a source (or every source) in the background (admin).")
    def reindex(body: ReindexRequest, _: Admin) -> dict[str, Any]:
        if body.source is None and not kb.sources:
            raise ApiError(409, "no_sources", "the index has no sources: start kb serve with --docs, or kb source add")
        if body.source is not None and body.source not in kb.sources:
            known = ", ".join(sorted(kb.sources))
            raise ApiError(404, "not_found", f"no source named {body.source!r} (sources: {known})",
                           [{"field": "source", "message": "unknown source"}])  # fmt: skip
        wanted = {body.source} if body.source else set(kb.sources)
        with reindexing:
            for run in runs.values():
                busy = {run.options["source"]} if run.options["source"] else set(kb.sources)
                if run.job.running and (busy & wanted or body.full or run.options["full"]):
                    raise ApiError(409, "reindex_running", f"reindex {run.id} of {sorted(busy)} is still running")
            options = body.model_dump()
            target = options.pop("source")
            run = ReindexRun(kb.reindex_in_background(source=target, **options), {"source": target, **options})
            runs[run.id] = run
        return {**run.as_dict(), "status_url": f"/reindex/{run.id}"}

    @app.get("/reindex/{run_id}", summary="Progress and report of a reindex (admin).")
    def reindex_status(run_id: str, _: Admin) -> dict[str, Any]:
        run = runs.get(run_id)
        if run is None:
            raise ApiError(404, "not_found", f"no reindex with id {run_id!r} (ids are kept until the server restarts)")
        return run.as_dict()

    app.state.docs_source = docs_source
    mount_web(app)
    return app


def _field_error(err: dict[str, Any]) -> dict[str, str]:
    """One validation error as ``{"field", "message"}``: the body path, or ``body`` for unparsable JSON."""
    if err.get("type") == "json_invalid":
        ctx = err.get("ctx") or {}
        return {"field": "body", "message": f"invalid JSON ({ctx.get('error', 'syntax error')})"}
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "model_attributes_type":
        return {"field": "body", "message": "expected a JSON object"}
    return {"field": ".".join(loc) or "body", "message": str(err.get("msg", "invalid")).removeprefix("Value error, ")}


class _AssumeJson:
    """Treat a POST body sent without a JSON content type (curl's default is form-encoded) as JSON.

    kb's API takes nothing but JSON, so a client that forgot the header gets the same parsing, and a body
    that is not JSON gets the usual 422 naming the problem."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
