"""The HTTP API over real HTTP: uvicorn serving the app on a loopback port, httpx as the client, a real
index of the sample knowledge base behind it (extractive answers, so no LLM is needed). Auth, malformed
bodies, streaming, background reindex, and a schemathesis run over the OpenAPI description (no 5xx)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings

from kb import KnowledgeBase
from kb.api import create_app
from kb.errors import ConfigError
from kb.samples import sample_kb_path
from kb.settings import ApiKey, Role

READ = "read-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"
HR = "hr-reader-key-0123456789"
KEYS = [
    ApiKey(key=READ, role=Role.READ, name="app"),
    ApiKey(key=ADMIN, role=Role.ADMIN, name="ops", groups=["*"]),
    ApiKey(key=HR, role=Role.READ, name="hr-app", groups=["hr"]),
]
SECRET = "---\nacl: [hr]\n---\n# Salary bands\n\nLevel 5 engineers earn zqhrsecret 141,000 euros.\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served_app(kb: KnowledgeBase, docs: Path | None = None, keys: list[ApiKey] | None = None) -> Iterator[str]:
    """``create_app(kb, docs)`` served by uvicorn on a free loopback port; yields its base URL. ``keys``, when
    given, is the live list the app checks keys against (a test may add keys while it runs)."""
    port = _free_port()
    api = create_app(kb, docs)
    if keys is not None:
        api.state.keys = keys
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, KnowledgeBase]]:
    root = tmp_path_factory.mktemp("api")
    docs = root / "docs"
    shutil.copytree(sample_kb_path(), docs)
    (docs / "hr").mkdir()
    (docs / "hr" / "salaries.md").write_text(SECRET)
    kb = KnowledgeBase.open(root / "index", llm_backend="extractive", api_keys=KEYS)
    kb.ingest(docs)
    with served_app(kb, docs) as base:
        yield base, docs, kb
    kb.close()


@pytest.fixture
def client(served: tuple[str, Path, KnowledgeBase]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], timeout=60) as http:
        yield http


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_health_is_open_and_everything_else_needs_a_key(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    missing = client.post("/search", json={"query": "E4012"})
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    assert "Bearer" in missing.json()["message"] and missing.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/status", headers=auth("wrong-key-0123456789")).status_code == 401
    status = client.get("/status", headers={"X-API-Key": READ})
    assert status.status_code == 200 and status.json()["documents"] == 26  # the hr document is not counted
    assert client.get("/status", headers=auth(HR)).json()["documents"] == 27
    assert "api_keys" not in status.json()["settings"] and READ not in status.text  # a read key sees no keys
    full = client.get("/status", headers=auth(ADMIN)).json()
    assert {k["key"] for k in full["settings"]["api_keys"]} == {"***"} and ADMIN not in str(full)  # masked


def test_search_returns_the_same_hits_as_the_library(
    client: httpx.Client, served: tuple[str, Path, KnowledgeBase]
) -> None:
    response = client.post("/search", headers=auth(READ), json={"query": "What does error E4012 mean?", "k": 3})
    assert response.status_code == 200
    hits = response.json()["hits"]
    in_process = served[2].search("What does error E4012 mean?", k=3)
    assert [h["node_id"] for h in hits] == [h.node_id for h in in_process]
    assert "E4012" in hits[0]["text"]
    assert hits[0]["span"]["line_start"] >= 1 and hits[0]["header_path"]
    filtered = client.post("/search", headers=auth(READ), json={"query": "rotate key", "filters": {"product": "api"}})
    assert all(h["metadata"]["product"] == "api" for h in filtered.json()["hits"])


def test_each_key_reads_only_what_its_groups_may(client: httpx.Client) -> None:
    body = {"query": "zqhrsecret salary bands", "k": 5, "mode": "bm25"}
    public = client.post("/search", headers=auth(READ), json=body).json()["hits"]
    assert all(h["doc_id"] != "docs:hr/salaries.md" for h in public)
    assert client.post("/search", headers=auth(HR), json=body).json()["hits"][0]["doc_id"] == "docs:hr/salaries.md"
    answer = client.post("/ask", headers=auth(READ), json={"question": "What do level 5 engineers earn?"}).json()
    assert "141,000" not in answer["text"] and all(c["doc_id"] != "docs:hr/salaries.md" for c in answer["citations"])
    hr_answer = client.post("/ask", headers=auth(HR), json={"question": "What do level 5 engineers earn?"}).json()
    assert any(c["doc_id"] == "docs:hr/salaries.md" for c in hr_answer["citations"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "query"),
        ({"query": "x", "k": 0}, "k"),
        ({"query": "x", "k": "ten"}, "k"),
        ({"query": "x", "mode": "semantic"}, "mode"),
        ({"query": "x", "filters": {"product": {"nested": 1}}}, "filters.product"),
        ({"query": "x", "limit": 3}, "limit"),
        ({"query": "x", "filters": {"": "billing"}}, "filters"),  # was a 400 naming no field
        ({"query": "x", "filters": {"no spaces": "billing"}}, "filters"),
    ],
)
def test_malformed_search_bodies_get_422_naming_the_field(client: httpx.Client, body: dict, field: str) -> None:
    response = client.post("/search", headers=auth(READ), json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["error"] == "invalid_request"
    assert any(f["field"] == field or f["field"].startswith(field + ".") for f in error["fields"]), error


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'{"question": "caf\xe9?"}', b"[" * 100_000 + b"]" * 100_000],
    ids=["syntax", "not UTF-8", "nested past the parser"],  # the last two were 400 "http_error" naming no field
)
def test_a_body_that_is_not_json_is_a_clear_422_naming_the_body(client: httpx.Client, raw: bytes) -> None:
    response = client.post("/ask", headers={**auth(READ), "Content-Type": "application/json"}, content=raw)
    assert response.status_code == 422 and response.json()["error"] == "invalid_request", response.text
    assert [f["field"] for f in response.json()["fields"]] == ["body"], response.text


def test_ask_answers_with_citations_or_refuses(client: httpx.Client) -> None:
    answer = client.post("/ask", headers=auth(READ), json={"question": "How do I rotate an API key?"}).json()
    assert not answer["refused"] and answer["citations"]
    assert "rotate" in answer["citations"][0]["doc_id"] and "[1]" in answer["text"]
    refusal = client.post("/ask", headers=auth(READ), json={"question": "What is the capital of Mongolia?"}).json()
    assert refusal["refused"] and refusal["citations"] == []


def test_bad_questions_get_400_not_500(client: httpx.Client) -> None:
    for question in ("   ", "x" * 5000, "\x00\x01\x02"):
        response = client.post("/ask", headers=auth(READ), json={"question": question})
        assert response.status_code == 400, (question[:10], response.text)
        assert "question" in response.json()["message"]
        streamed = client.post("/ask", headers=auth(READ), json={"question": question, "stream": True})
        assert streamed.status_code == 400


def test_streaming_sends_tokens_then_the_cited_answer(client: httpx.Client) -> None:
    events: list[tuple[str, dict]] = []
    body = {"question": "How do I verify a webhook signature?", "stream": True}
    with client.stream("POST", "/ask", headers=auth(READ), json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "answer" and kinds.count("answer") == 1 and "token" in kinds[:-1]
    answer = events[-1][1]
    assert answer["citations"] and "".join(d["text"] for k, d in events if k == "token").strip()


def test_a_generator_that_is_down_is_the_servers_fault_and_its_address_stays_private(tmp_path: Path) -> None:
    """It was a 400 ("bad_request") whose message, and the stream's error event, named the LLM endpoint: a read key
    may not see that address, and the caller can do nothing about it."""
    hidden = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    unnamed = KnowledgeBase.open(tmp_path / "unnamed", llm_backend="openai", api_keys=KEYS)
    with unnamed, pytest.raises(ConfigError, match="llm_model"):  # a generator it cannot build stops it at start-up
        create_app(unnamed)
    settings = {"llm_backend": "openai", "llm_base_url": hidden, "llm_model": "some-model", "api_keys": KEYS}
    kb = KnowledgeBase.open(tmp_path / "index", **settings)
    kb.ingest(sample_kb_path())
    question = {"question": "What does error E4012 mean?"}
    with kb, served_app(kb) as base, httpx.Client(base_url=base, headers={"X-API-Key": READ}, timeout=60) as client:
        for path, body in (
            ("/ask", question),
            ("/chat", {"messages": [{"role": "user", "content": question["question"]}]}),
        ):
            reply = client.post(path, json=body)
            assert reply.status_code == 502, (path, reply.text)
            assert reply.json()["error"] == "llm_unavailable" and reply.json()["fields"] == [], reply.text
            assert "127.0.0.1" not in reply.text and "/v1" not in reply.text, reply.text
        with client.stream("POST", "/ask", json={**question, "stream": True}) as stream:
            events = stream.read().decode()
        assert "event: error" in events and '"llm_unavailable"' in events and "127.0.0.1" not in events, events


def test_chat_answers_a_follow_up_and_refuses_bad_conversations_with_4xx(client: httpx.Client) -> None:
    messages = [
        {"role": "user", "content": "How do I manually fail over the ledger database?"},
        {"role": "assistant", "content": "Promote the replica."},
        {"role": "user", "content": "And how do I undo it?"},
    ]
    answer = client.post("/chat", headers=auth(READ), json={"messages": messages}).json()
    assert "ledger" in answer["question"] and answer["citations"]
    assert answer["sources"][0]["doc_id"].endswith("database-failover.md")
    streamed = client.post("/chat", headers=auth(READ), json={"messages": messages, "stream": True})
    assert streamed.status_code == 200 and "event: answer" in streamed.text
    assert client.post("/chat", json={"messages": messages}).status_code == 401
    for bad, status in (
        ({"messages": []}, 422),
        ({"messages": [{"role": "system", "content": "x"}]}, 422),
        ({"messages": [{"role": "user", "content": ""}]}, 422),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, 422),  # was 400
    ):
        response = client.post("/chat", headers=auth(READ), json=bad)
        assert response.status_code == status, (bad, response.text)
        assert response.json()["fields"][0]["field"].startswith("messages"), response.text
    hr_only = [
        {"role": "user", "content": "What do level 5 engineers earn?"},
        {"role": "user", "content": "and level 6?"},
    ]
    public = client.post("/chat", headers=auth(READ), json={"messages": hr_only}).json()
    assert all(c["doc_id"] != "docs:hr/salaries.md" for c in public["citations"]) and "141,000" not in public["text"]


def test_reindex_needs_admin_runs_in_background_and_reports(
    client: httpx.Client, served: tuple[str, Path, KnowledgeBase]
) -> None:
    docs = served[1]
    assert client.post("/reindex", headers=auth(READ), json={}).status_code == 403
    (docs / "api-new.md").write_text("# New page\n\nThe zqnewpage token lives here, added over HTTP.\n")
    run = reindexed(client, {})
    assert run["state"] == "done" and run["report"]["added"] == 1, run
    hits = client.post("/search", headers=auth(READ), json={"query": "zqnewpage", "k": 1, "mode": "bm25"}).json()
    assert hits["hits"][0]["doc_id"] == "docs:api-new.md"
    missing = client.get("/reindex/nope", headers=auth(ADMIN))
    assert missing.status_code == 404 and "nope" in missing.json()["message"]


def reindexed(client: httpx.Client, body: dict) -> dict:
    """Start a reindex over HTTP and poll its status until it has finished."""
    started = client.post("/reindex", headers=auth(ADMIN), json=body)
    assert started.status_code == 202, started.text
    run = started.json()
    deadline = time.time() + 120
    while run["state"] == "running" and time.time() < deadline:
        time.sleep(0.2)  # polling the documented status URL, not hoping a race happened
        run = client.get(started.json()["status_url"], headers=auth(ADMIN)).json()
    return run


def test_reindex_over_http_can_verify_files_that_failed_before(
    client: httpx.Client, served: tuple[str, Path, KnowledgeBase]
) -> None:
    """A file that failed to parse is remembered and not parsed again; `verify` retries it, over HTTP too."""
    docs = served[1]
    (docs / "api-broken.pdf").write_bytes(b"%PDF-1.7\n" + b"\x00" * 64)
    try:
        reasons = []
        for body in ({}, {}, {"verify": True}):
            run = reindexed(client, body)
            assert run["state"] == "done", run
            reasons.append({s["doc_id"]: s["reason"] for s in run["report"]["skipped"]}["docs:api-broken.pdf"])
        assert "--verify" not in reasons[0] and "--verify" in reasons[1] and "--verify" not in reasons[2]
    finally:
        (docs / "api-broken.pdf").unlink()


def test_no_request_from_the_openapi_description_gets_a_5xx(served: tuple[str, Path, KnowledgeBase]) -> None:
    """Schemathesis generates requests (valid and not) from the served OpenAPI description; none may 5xx."""
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{served[0]}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /ask", "POST /search", "POST /reindex", "GET /status"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            response = case.call(base_url=served[0], headers=auth(ADMIN), timeout=60)
            case.validate_response(response, checks=[not_a_server_error])

        check()


ARENA_PROBE = """
import ctypes, sys, tempfile, threading
from kb.api import cap_malloc_arenas
print(cap_malloc_arenas(2) if sys.argv[1] == "capped" else False)
barrier, held = threading.Barrier(8), []
def request():  # each worker thread's first malloc (64 kB: under the mmap threshold) picks its arena
    barrier.wait()
    held.append(ctypes.create_string_buffer(64_000))
    barrier.wait()
threads = [threading.Thread(target=request) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile("r", suffix=".xml") as out:
    stream = ctypes.c_void_p(libc.fopen(out.name.encode(), b"w"))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(out.read().count("<heap nr="))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")
def test_server_threads_share_two_malloc_arenas_instead_of_one_each() -> None:
    # The HTTP soak's resident set stepped up for 4,500 requests while the Python heap stayed flat: each
    # worker thread's own arena kept its peak. kb serve caps them; glibc's malloc_info counts the arenas.
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}

    def arenas(mode: str) -> tuple[str, int]:
        run = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        was_set, count = run.stdout.split()
        return was_set, int(count)

    was_set, default = arenas("default")
    assert was_set == "False" and default > 2  # glibc's own limit is 8 per core: the 8 threads got their own
    assert arenas("capped") == ("True", 2)
    assert (
        subprocess.run(
            [sys.executable, "-c", "from kb.api import cap_malloc_arenas; assert not cap_malloc_arenas()"],
            env={**env, "MALLOC_ARENA_MAX": "4"},
        ).returncode
        == 0
    )  # the operator's own setting wins
