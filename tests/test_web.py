"""The web page (``GET /``) and the offline API docs (``/docs``), in a real browser.

Debian's ``chromium`` runs headless, driven by selenium through Debian's ``chromium-driver`` (no browser
download at run time), against uvicorn serving the sample knowledge base plus two documents of this test:
one only the ``hr`` group may read, and one whose text holds ``<script>`` and an ``onerror`` image. The
browser resolves no host but 127.0.0.1, so a page that reached for a CDN would fail here. The endpoints the
page adds (``/documents/{doc_id}``, ``/facets``) are also checked over plain HTTP, with or without a browser.

``.ci/run`` installs chromium; where it is missing (a developer's ``make test``) the browser cases skip.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from kb import KnowledgeBase
from kb.samples import sample_kb_path
from tests.test_api import ADMIN, HR, KEYS, READ, SECRET, auth, served_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDGET = """---
title: "Embedding the <b>checkout</b> widget"
product: gateway
kind: guide
---
# Embedding the checkout widget

To embed the zqwidget checkout, paste this tag into your page: <script>window.kbInjected = 1</script>

An image tag such as <img src="x" onerror="window.kbInjected = 2"> is shown as text, never run.
"""
SECRET_DOC = SECRET.replace("acl: [hr]\n", "acl: [hr]\nteam: payroll\n")  # a facet value only hr may see
REFUSALS = {  # what the page says for each refusal reason (kb/web/static/app.js)
    "no_relevant_sources": "No source in the knowledge base is close to this question.",
    "model": "The sources do not contain the answer.",
    "unsupported": "The generated answer was withheld: no source supports what it says.",
    "unsafe_output": "The generated answer was withheld: it did not keep to the sources.",
}
WAIT_S = 60

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    SELENIUM = True
except ImportError:  # pragma: no cover - the test extra installs it
    SELENIUM = False

NO_BROWSER = (
    "" if SELENIUM and CHROMIUM.exists() and CHROMEDRIVER.exists()
    else "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) and selenium"
)  # fmt: skip
browser_test = pytest.mark.skipif(bool(NO_BROWSER), reason=NO_BROWSER or "browser present")


@dataclass
class Site:
    base: str
    kb: KnowledgeBase
    docs: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("web")
    docs = root / "docs"
    shutil.copytree(sample_kb_path(), docs)
    (docs / "hr").mkdir()
    (docs / "hr" / "salaries.md").write_text(SECRET_DOC)
    (docs / "notes").mkdir()
    (docs / "notes" / "embedding-widgets.md").write_text(WIDGET)
    kb = KnowledgeBase.open(root / "index", llm_backend="extractive", api_keys=KEYS)
    kb.ingest(docs)
    with served_app(kb, docs) as base:
        yield Site(base, kb, docs)
    kb.close()


@pytest.fixture
def http(site: Site) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site.base, timeout=60) as client:
        yield client


def chunk_of(site: Site, query: str) -> tuple[str, str]:
    """(doc_id, node_id) of the best BM25 hit for ``query``, as a trusted in-process caller sees it."""
    hit = site.kb.search(query, k=1, mode="bm25")[0]
    return hit.doc_id, hit.node_id


def doc_url(doc_id: str) -> str:
    return "/documents/" + quote(doc_id, safe="")


# -- the endpoints, over HTTP ---------------------------------------------------------------------------
def test_the_page_is_served_with_a_strict_content_security_policy(http: httpx.Client) -> None:
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self';" in policy and "unsafe-inline" not in policy
    assert "<script>" not in page.text and 'src="/web/app.js"' in page.text  # no inline script at all
    assert http.get("/web/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
    missing = http.get("/web/nothing-here.js")
    assert missing.status_code == 404 and set(missing.json()) >= {"error", "message"}
    assert http.get("/web/../api.py").status_code == 404


def test_docs_use_the_vendored_swagger_ui(http: httpx.Client) -> None:
    docs = http.get("/docs")
    assert docs.status_code == 200 and "cdn." not in docs.text and "/web/swagger/swagger-ui-bundle.js" in docs.text
    assert "default-src 'self'" in docs.headers["content-security-policy"]
    bundle = http.get("/web/swagger/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 1_000_000
    assert http.get("/web/swagger/swagger-ui.css").status_code == 200
    assert http.get("/redoc").status_code == 404  # it would load redoc from a CDN: not offered


def test_the_source_view_endpoint_applies_the_acl_like_search(http: httpx.Client, site: Site) -> None:
    doc_id, node_id = chunk_of(site, "zqhrsecret salary bands")
    assert doc_id == "docs:hr/salaries.md"
    for params in ({}, {"chunk": node_id}):
        denied = http.get(doc_url(doc_id), params=params, headers=auth(READ))
        assert denied.status_code == 404, denied.text
        assert denied.json()["error"] == "not_found" and "zqhrsecret" not in denied.text
        assert (
            http.get(doc_url("docs:no/such.md"), params=params, headers=auth(READ)).json()["message"].startswith("no ")
        )
    view = http.get(doc_url(doc_id), params={"chunk": node_id}, headers=auth(HR)).json()
    assert view["doc_id"] == doc_id and view["chunk"] == node_id
    cited = [block["text"] for s in view["sections"] for block in s["blocks"] if block["cited"]]
    assert any("zqhrsecret" in text for text in cited)
    assert http.get(doc_url(doc_id), headers={"X-API-Key": ADMIN}).status_code == 200
    assert http.get(doc_url(doc_id)).status_code == 401


def test_the_source_view_shows_the_section_as_blocks_around_the_cited_span(http: httpx.Client, site: Site) -> None:
    doc_id, node_id = chunk_of(site, "Rotating an API key lumen keys create")
    view = http.get(doc_url(doc_id), params={"chunk": node_id}, headers=auth(READ)).json()
    sections = view["sections"]
    assert [s["chunk_index"] for s in sections] == sorted(s["chunk_index"] for s in sections)
    cited = [s for s in sections if s["cited"]]
    assert [s["node_id"] for s in cited] == [node_id]
    headings = [b for s in sections for b in s["blocks"] if b["kind"] == "heading"]
    assert headings and all("#" not in b["text"] for b in headings)  # Markdown syntax is not shown
    assert any(b["kind"] == "code" for s in sections for b in s["blocks"])
    # A cited span wider than the chunk (an answer's small-to-big passage) marks every chunk it covers.
    whole = http.get(doc_url(doc_id), params={"chunk": node_id, "start": 0, "end": 10**6}, headers=auth(READ)).json()
    assert all(s["cited"] for s in whole["sections"])
    narrow = http.get(doc_url(doc_id), params={"chunk": node_id, "around": 0}, headers=auth(READ)).json()
    assert [s["node_id"] for s in narrow["sections"]] == [node_id] and narrow["chunks_total"] == len(sections)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": 5}, "end"),
        ({"start": 9, "end": 3}, "end"),
        ({"around": -1}, "around"),
        ({"chunk": "x" * 300}, "chunk"),
    ],
)
def test_bad_source_view_parameters_get_a_4xx_in_the_json_shape(http: httpx.Client, params: dict, field: str) -> None:
    response = http.get(doc_url("docs:api/errors.md"), params=params, headers=auth(READ))
    assert response.status_code == 422, response.text
    body = response.json()
    assert (
        body["error"] == "invalid_request"
        and body["message"]
        and any(f["field"] == f"query.{field}" for f in body["fields"])
    )


def test_filter_choices_are_the_indexed_fields_values_the_key_may_read(http: httpx.Client) -> None:
    def values(key: str) -> dict[str, list[Any]]:
        fields = http.get("/facets", headers=auth(key)).json()["fields"]
        return {f["field"]: [v["value"] for v in f["values"]] for f in fields}

    public, hr = values(READ), values(HR)
    assert set(public) == {"product", "kind", "tags", "team"}
    assert {"api", "billing", "gateway", "ledger"} <= set(public["product"])
    assert "payroll" not in public["team"] and "payroll" in hr["team"]
    assert http.get("/facets").status_code == 401


def test_status_names_the_caller_so_the_page_knows_what_to_offer(http: httpx.Client) -> None:
    assert http.get("/status", headers=auth(READ)).json()["caller"] == {"name": "app", "role": "read", "groups": []}
    assert http.get("/status", headers=auth(ADMIN)).json()["caller"]["role"] == "admin"


# -- the page, in the browser ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if NO_BROWSER:
        pytest.skip(NO_BROWSER)
    profile = tempfile.mkdtemp(prefix="kb-chromium-")
    driver = start_chromium(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def start_chromium(profile: str, width: int = 1280, height: int = 900) -> WebDriver:
    """Headless Debian chromium that can reach nothing but 127.0.0.1 (the network is cut for the page)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    try:
        return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    except WebDriverException as exc:
        pytest.fail(f"chromium is installed but did not start: {exc.msg}")


def wait(driver: WebDriver, timeout: float = WAIT_S) -> WebDriverWait:
    return WebDriverWait(driver, timeout)


def visible(driver: WebDriver, css: str) -> WebElement:
    return wait(driver).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def open_page(driver: WebDriver, site: Site, key: str, view: str = "ask") -> None:
    """A fresh page load with ``key`` entered in the key form (and so kept in session storage)."""
    driver.get(f"{site.base}/#{view}")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{site.base}/#{view}")
    driver.refresh()
    field = visible(driver, "#key-input")
    field.send_keys(key)
    field.send_keys(Keys.ENTER)
    visible(driver, "#key-set")
    assert driver.execute_script("return sessionStorage.getItem('kb.apiKey')") == key


def ask(driver: WebDriver, question: str, turn: int) -> WebElement:
    """Type ``question`` and press Enter; the ``turn``-th answer once it is complete."""
    box = visible(driver, "#question")
    box.send_keys(question)
    box.send_keys(Keys.ENTER)
    css = f"#turn-{turn}"
    wait(driver).until(lambda d: d.find_element(By.CSS_SELECTOR, css).get_attribute("data-state") != "streaming")
    return driver.find_element(By.CSS_SELECTOR, css)


def open_source_view(driver: WebDriver, link: WebElement) -> WebElement:
    link.click()
    wait(driver).until(
        lambda d: d.find_element(By.ID, "source-view").get_attribute("data-state") in ("ready", "failed")
    )
    panel = driver.find_element(By.ID, "source-view")
    assert panel.get_attribute("data-state") == "ready", panel.text
    return panel


def in_view(driver: WebDriver, element: WebElement, container: WebElement) -> bool:
    """Whether ``element`` is scrolled into the visible part of ``container``."""
    return driver.execute_script(
        "const e = arguments[0].getBoundingClientRect(), c = arguments[1].getBoundingClientRect();"
        "return e.bottom > c.top && e.top < c.bottom;",
        element,
        container,
    )


def console_errors(driver: WebDriver) -> list[str]:
    """What the page logged as errors since the last call (a CSP violation is one)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def pairs(driver: WebDriver, css: str) -> list[tuple[str, str]]:
    """The (term, description) rows of the definition list at ``css``."""
    terms = driver.find_elements(By.CSS_SELECTOR, f"{css} > dt")
    return [(t.text, d.text) for t, d in zip(terms, driver.find_elements(By.CSS_SELECTOR, f"{css} > dd"), strict=True)]


def fetch(driver: WebDriver, path: str, key: str, method: str = "GET", body: dict | None = None) -> dict[str, Any]:
    """A request made by the page's own origin with ``key``: {status, body}."""
    script = """
        const [path, key, method, body, done] = arguments;
        const init = {method, headers: {Authorization: 'Bearer ' + key, 'Content-Type': 'application/json'}};
        if (body !== null) init.body = JSON.stringify(body);
        fetch(path, init).then(async (r) => done({status: r.status, body: await r.text()}))
                         .catch((e) => done({status: 0, body: String(e)}));
    """
    return driver.execute_async_script(script, path, key, method, body)


@browser_test
def test_ask_streams_a_cited_answer_and_the_source_view_highlights_the_cited_span(
    browser: WebDriver, site: Site, http: httpx.Client
) -> None:
    question = "How do I rotate an API key?"
    expected = http.post("/ask", headers=auth(READ), json={"question": question}).json()
    open_page(browser, site, READ)
    console_errors(browser)  # only what happens from here on
    turn = ask(browser, question, 1)
    assert turn.get_attribute("data-state") == "done"
    assert int(turn.get_attribute("data-tokens")) >= 1  # text arrived as 'token' events before the answer
    text = turn.find_element(By.CSS_SELECTOR, ".answer-text")
    markers = text.find_elements(By.CSS_SELECTOR, "a.marker")
    assert text.text == expected["text"] and len(markers) == len(re.findall(r"\[\d+\]", expected["text"]))
    first = expected["citations"][0]
    entry = turn.find_element(By.CSS_SELECTOR, f"ol.sources li[id$='-source-{first['number']}']")
    for shown in (first["title"], first["header_path"], first["doc_id"], f"lines {first['span']['line_start']}"):
        assert shown in entry.text

    marker = next(m for m in markers if m.text == f"[{first['number']}]")
    panel = open_source_view(browser, marker)
    assert browser.find_element(By.ID, "sv-title").text == first["title"]
    cited = panel.find_elements(By.CSS_SELECTOR, "#sv-body .cited")
    assert cited, "no highlighted passage"
    shown = " ".join(c.text for c in cited)
    quoted = [word for word in first["quote"].rstrip("…").split() if word.strip("#")]  # the view shows no '#'
    assert " ".join(quoted[:8]) in " ".join(shown.split())
    found = panel.find_element(By.CSS_SELECTOR, f"#sv-body .retrieved[data-node='{first['node_id']}'] .cited")
    assert found.value_of_css_property("background-color") == "rgba(255, 241, 168, 1)"  # --mark: the found chunk
    body = browser.find_element(By.ID, "sv-body")
    wait(browser).until(lambda _: in_view(browser, found, body))
    assert not panel.find_elements(By.CSS_SELECTOR, "#sv-body h1, #sv-body h2")  # headings nest under the title

    # A source in the list opens the same view.
    browser.find_element(By.ID, "sv-close").click()
    wait(browser).until(ec.invisibility_of_element_located((By.ID, "source-view")))
    panel = open_source_view(browser, entry.find_element(By.CSS_SELECTOR, "a.view-link"))
    assert panel.find_elements(By.CSS_SELECTOR, "#sv-body .cited")
    assert console_errors(browser) == []  # nothing the Content-Security-Policy had to block


@browser_test
def test_a_follow_up_question_is_answered_in_the_same_thread(browser: WebDriver, site: Site) -> None:
    open_page(browser, site, READ)
    ask(browser, "How do I manually fail over the ledger database?", 1)
    follow_up = ask(browser, "And how do I undo it?", 2)
    assert follow_up.get_attribute("data-state") == "done"
    assert "ledger" in follow_up.find_element(By.CSS_SELECTOR, ".asked-as").text.lower()  # the standalone rewrite
    assert "database-failover.md" in follow_up.find_element(By.CSS_SELECTOR, "ol.sources").text
    browser.find_element(By.ID, "new-thread").click()
    wait(browser).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#thread .turn"))


@browser_test
def test_a_refusal_says_why_and_still_shows_the_closest_sources(
    browser: WebDriver, site: Site, http: httpx.Client
) -> None:
    question = "What is the capital of Mongolia?"
    expected = http.post("/ask", headers=auth(READ), json={"question": question}).json()
    assert expected["refused"] and expected["sources"]
    open_page(browser, site, READ)
    turn = ask(browser, question, 1)
    assert turn.get_attribute("data-state") == "refused"
    assert turn.find_element(By.CSS_SELECTOR, ".refusal").text == REFUSALS[expected["refusal_reason"]]
    assert turn.find_element(By.CSS_SELECTOR, ".sources-title").text == "Closest sources"
    closest = turn.find_elements(By.CSS_SELECTOR, "ol.sources li")
    assert len(closest) == len(expected["sources"]) and expected["sources"][0]["doc_id"] in closest[0].text
    assert not turn.find_elements(By.CSS_SELECTOR, ".answer-text a.marker")
    open_source_view(browser, closest[0].find_element(By.CSS_SELECTOR, "a.view-link"))


@browser_test
def test_search_with_a_filter_shows_scored_snippets_that_open_their_source(
    browser: WebDriver, site: Site, http: httpx.Client
) -> None:
    open_page(browser, site, READ, view="search")
    choice = Select(visible(browser, "#filter-product"))
    labels = [o.text for o in choice.options]
    assert labels[0] == "any" and any(label.startswith("api (") for label in labels)
    choice.select_by_visible_text(next(label for label in labels if label.startswith("api (")))
    Select(browser.find_element(By.ID, "mode")).select_by_value("hybrid")
    query = browser.find_element(By.ID, "query")
    query.send_keys("rotate key")
    query.send_keys(Keys.ENTER)
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .hit"))
    hits = browser.find_elements(By.CSS_SELECTOR, "#results .hit")
    expected = http.post(
        "/search",
        headers=auth(READ),
        json={"query": "rotate key", "k": 10, "mode": "hybrid", "filters": {"product": "api"}},
    ).json()["hits"]
    assert [h.get_attribute("data-doc") for h in hits] == [h["doc_id"] for h in expected]
    for hit, want in zip(hits, expected, strict=True):
        assert hit.find_element(By.CSS_SELECTOR, ".chip[data-field='product']").text == "product: api"
        assert hit.find_element(By.CSS_SELECTOR, ".score").text == f"{want['score']:.3f}"
        assert hit.find_element(By.CSS_SELECTOR, ".snippet").text
    panel = open_source_view(browser, hits[0].find_element(By.CSS_SELECTOR, "a.view-link"))
    assert panel.find_elements(By.CSS_SELECTOR, "#sv-body .cited")


@browser_test
def test_a_read_key_cannot_reindex_and_an_admin_key_sees_progress_and_the_report(
    browser: WebDriver, site: Site
) -> None:
    open_page(browser, site, READ, view="status")
    wait(browser).until(lambda d: d.find_element(By.ID, "status-list").get_attribute("data-state") == "ready")
    rows = dict(pairs(browser, "#status-list"))
    assert (
        rows["Documents"] == "27"
        and "all-MiniLM-L6-v2" in rows["Embedder"]
        and rows["Reranker"].startswith(("active", "off"))
    )
    assert not browser.find_element(By.ID, "reindex").is_displayed()
    refused = fetch(browser, "/reindex", READ, "POST", {})
    assert refused["status"] == 403 and "admin key" in json.loads(refused["body"])["message"]

    (site.docs / "notes" / "new-page.md").write_text("# A new page\n\nAdded while the page was open.\n")
    open_page(browser, site, ADMIN, view="status")
    button = visible(browser, "#reindex-button")
    assert browser.find_element(By.ID, "reindex-bar").tag_name == "progress"
    button.click()
    report = visible(browser, "#reindex-report .summary")
    assert report.text.startswith("1 added, 0 changed, 0 deleted, 28 unchanged"), report.text
    counts = dict(pairs(browser, "#reindex-report .counts"))
    assert counts.get("added") == "1" and counts.get("unchanged") == "28" and counts.get("deleted") == "0", counts
    assert browser.find_element(By.ID, "reindex-text").text == "Done: 29 documents checked"
    wait(browser).until(lambda d: d.find_element(By.ID, "status-list").get_attribute("data-state") == "ready")
    assert "docs · 29 documents" in browser.find_element(By.ID, "status-list").text  # the status was reloaded


@browser_test
def test_a_restricted_document_never_appears_for_a_key_without_its_group(browser: WebDriver, site: Site) -> None:
    doc_id, node_id = chunk_of(site, "zqhrsecret salary bands")
    open_page(browser, site, READ, view="search")
    assert "payroll" not in visible(browser, "#filter-team").text
    Select(browser.find_element(By.ID, "mode")).select_by_value("bm25")
    query = browser.find_element(By.ID, "query")
    query.send_keys("zqhrsecret salary bands")
    query.send_keys(Keys.ENTER)
    wait(browser).until(lambda d: "result" in d.find_element(By.ID, "search-info").text)
    assert "zqhrsecret" not in browser.find_element(By.ID, "results").text
    assert doc_id not in browser.find_element(By.ID, "results").text
    denied = fetch(browser, f"{doc_url(doc_id)}?chunk={node_id}", READ)
    assert denied["status"] == 404 and "zqhrsecret" not in denied["body"]
    assert json.loads(denied["body"])["error"] == "not_found"

    browser.get(f"{site.base}/#ask")
    turn = ask(browser, "What do level 5 engineers earn?", 1)
    assert "141,000" not in turn.text and doc_id not in turn.text

    open_page(browser, site, HR, view="search")
    Select(browser.find_element(By.ID, "mode")).select_by_value("bm25")
    query = browser.find_element(By.ID, "query")
    query.send_keys("zqhrsecret salary bands")
    query.send_keys(Keys.ENTER)
    first = wait(browser).until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#results .hit")))
    assert first.get_attribute("data-doc") == doc_id
    panel = open_source_view(browser, first.find_element(By.CSS_SELECTOR, "a.view-link"))
    assert "zqhrsecret" in " ".join(e.text for e in panel.find_elements(By.CSS_SELECTOR, "#sv-body .cited"))


@browser_test
def test_a_document_containing_script_renders_as_text(browser: WebDriver, site: Site) -> None:
    open_page(browser, site, READ, view="search")
    query = visible(browser, "#query")
    query.send_keys("zqwidget checkout")
    query.send_keys(Keys.ENTER)
    hit = wait(browser).until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#results .hit")))
    assert hit.get_attribute("data-doc") == "docs:notes/embedding-widgets.md"
    assert "<script>window.kbInjected = 1</script>" in hit.find_element(By.CSS_SELECTOR, ".snippet").text
    assert hit.find_element(By.CSS_SELECTOR, "a.view-link").text == "Embedding the <b>checkout</b> widget"
    panel = open_source_view(browser, hit.find_element(By.CSS_SELECTOR, "a.view-link"))
    body = panel.find_element(By.ID, "sv-body").text
    assert "<script>window.kbInjected = 1</script>" in body and '<img src="x" onerror="window.kbInjected = 2">' in body
    assert browser.find_element(By.ID, "sv-title").text == "Embedding the <b>checkout</b> widget"
    markup = browser.execute_script(
        "return document.querySelectorAll('#results script, #results img, #results b, #sv-body script, "
        "#sv-body img, #source-view b').length"
    )
    assert markup == 0
    assert browser.execute_script("return typeof window.kbInjected") == "undefined"


@browser_test
def test_the_page_works_by_keyboard_and_at_phone_width(browser: WebDriver, site: Site) -> None:
    browser.set_window_size(390, 844)
    try:
        open_page(browser, site, READ)
        turn = ask(browser, "What does error E4012 mean?", 1)  # typed, submitted with Enter
        marker = turn.find_element(By.CSS_SELECTOR, "a.marker")
        browser.execute_script("arguments[0].focus()", marker)
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        wait(browser).until(lambda d: d.find_element(By.ID, "source-view").get_attribute("data-state") == "ready")
        panel = browser.find_element(By.ID, "source-view")
        size = browser.execute_script(
            "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]"
        )
        assert size[1] <= size[0], f"the page is wider than the phone: {size}"
        box = panel.rect
        assert box["x"] == 0 and box["width"] >= size[0]  # the source view takes the whole screen
        assert in_view(browser, panel.find_element(By.CSS_SELECTOR, "#sv-body .cited"), panel)
        browser.switch_to.active_element.send_keys(Keys.ESCAPE)
        wait(browser).until(ec.invisibility_of_element_located((By.ID, "source-view")))
        assert browser.switch_to.active_element == marker  # focus returns to the marker that opened it
    finally:
        browser.set_window_size(1280, 900)


@browser_test
def test_docs_render_swagger_ui_with_the_network_cut(browser: WebDriver, site: Site) -> None:
    browser.get_log("performance")  # drop what earlier pages requested and logged
    console_errors(browser)
    browser.get(f"{site.base}/docs")
    title = visible(browser, "#swagger-ui .info .title")
    assert title.text.startswith("kb")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#swagger-ui .opblock"))
    assert browser.find_element(By.CSS_SELECTOR, "#swagger-ui .opblock").value_of_css_property("border-radius") != "0px"
    requested = [
        message["params"]["request"]["url"]
        for entry in browser.get_log("performance")
        if (message := json.loads(entry["message"])["message"])["method"] == "Network.requestWillBeSent"
    ]
    assert any(url.endswith("/web/swagger/swagger-ui-bundle.js") for url in requested)
    assert any(url.endswith("/openapi.json") for url in requested)
    outside = [url for url in requested if not url.startswith((site.base, "data:", "blob:", "about:"))]
    assert outside == [], f"the docs page reached outside the server: {outside}"
    assert console_errors(browser) == []
