// kb's web page: a client of the JSON API like any other (the key decides what it may read).
// Document text is only ever set with textContent: no string from the server becomes markup.
"use strict";

(() => {
  const KEY_STORAGE = "kb.apiKey";
  const VIEWS = ["ask", "search", "status"];
  const REFUSALS = {
    no_relevant_sources: "No source in the knowledge base is close to this question.",
    model: "The sources do not contain the answer.",
    unsafe_output: "The generated answer was withheld: it did not keep to the sources.",
    unsupported: "The generated answer was withheld: no source supports what it says.",
  };
  const POLL_MS = 400;

  const $ = (id) => document.getElementById(id);
  const thread = [];  // the conversation so far: {role, content}
  let turns = 0;
  let opener = null;  // what opened the source view (focus goes back there)
  let caller = null;  // from /status: {name, role, groups}
  let facetsLoaded = false;

  // -- DOM ------------------------------------------------------------------------------------------
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "className") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // A link that opens the source view (and, without script, points at an anchor on the page).
  function sourceLink(text, target, className) {
    return el("a", {
      href: target.anchor || "#",
      className: className || "view-link",
      text,
      onclick: (event) => {
        event.preventDefault();
        openSource(target, event.currentTarget);
      },
    });
  }

  function safeUrl(url) {
    // Only web links: a source URL template could name anything, javascript: included.
    try {
      const parsed = new URL(url, window.location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch {
      return null;
    }
  }

  function externalLink(url) {
    const href = safeUrl(url);
    if (!href) return null;
    return el("a", { href, className: "external", rel: "noopener noreferrer", target: "_blank", text: url });
  }

  function where(span) {
    if (!span) return "";
    if (span.page_start) {
      const same = !span.page_end || span.page_end === span.page_start;
      return same ? `p. ${span.page_start}` : `pp. ${span.page_start}–${span.page_end}`;
    }
    return span.line_start ? `lines ${span.line_start}–${span.line_end}` : "";
  }

  function notice(message) {
    const box = $("notice");
    box.textContent = message || "";
    box.hidden = !message;
  }

  // -- key and requests -------------------------------------------------------------------------------
  function key() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function showKey() {
    const has = Boolean(key());
    $("key-form").hidden = has;
    $("key-set").hidden = !has;
    if (has && caller) $("key-label").textContent = `Key: ${caller.name || "unnamed"} (${caller.role})`;
    else if (has) $("key-label").textContent = "Key in use";
  }

  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function request(path, options) {
    const headers = { Accept: "application/json" };
    if (key()) headers.Authorization = `Bearer ${key()}`;
    const init = { method: (options && options.method) || "GET", headers };
    if (options && options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const response = await fetch(path, init);
    if (!response.ok) throw await failure(response);
    return response;
  }

  async function failure(response) {
    let code = "http_error";
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      code = body.error || code;
      message = body.message || message;
    } catch {
      // not JSON: keep the status line
    }
    if (response.status === 401) {
      // A refused key is forgotten, so the key form comes back.
      sessionStorage.removeItem(KEY_STORAGE);
      caller = null;
      showKey();
      message = `The server needs a valid API key: ${message}`;
      notice(message);
    }
    return new ApiFailure(response.status, code, message);
  }

  async function getJson(path, options) {
    return (await request(path, options)).json();
  }

  // Server-sent events from a POST (EventSource can only GET): yields {event, data}.
  async function* events(response) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const raw = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of raw.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
      }
    }
  }

  // -- views ------------------------------------------------------------------------------------------
  function route() {
    const name = window.location.hash.slice(1);
    const view = VIEWS.includes(name) ? name : "ask";
    for (const other of VIEWS) {
      $(`view-${other}`).hidden = other !== view;
      const tab = $(`tab-${other}`);
      if (other === view) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    if (view === "status") loadStatus();
    if (view === "search" && !facetsLoaded) loadFacets();
  }

  // -- ask --------------------------------------------------------------------------------------------
  async function ask(event) {
    event.preventDefault();
    const question = $("question").value.trim();
    if (!question) return;
    const turn = newTurn(question);
    $("question").value = "";
    $("ask-button").disabled = true;
    const messages = [...thread, { role: "user", content: question }];
    // The first question goes to /ask; follow-ups to /chat, which makes them standalone.
    const path = thread.length ? "/chat" : "/ask";
    const body = thread.length ? { messages, stream: true } : { question, stream: true };
    try {
      const response = await request(path, { method: "POST", body });
      let answer = null;
      for await (const { event: kind, data } of events(response)) {
        if (kind === "token") turn.token(data.text || "");
        else if (kind === "answer") answer = data;
        else if (kind === "error") throw new ApiFailure(500, data.error, data.message);
      }
      if (!answer) throw new ApiFailure(500, "incomplete", "the answer stream ended early; ask again");
      turn.finish(answer);
      thread.push({ role: "user", content: question }, { role: "assistant", content: answer.text });
      $("new-thread").hidden = false;
      $("question-label").textContent = "Follow-up question";
    } catch (error) {
      turn.fail(error.message);
      if (!$("question").value) $("question").value = question;  // to edit and ask again
    } finally {
      $("ask-button").disabled = false;
      $("question").focus();
    }
  }

  function newTurn(question) {
    turns += 1;
    const id = turns;
    const answerText = el("p", { className: "answer-text", "aria-live": "polite" });
    const state = el("p", { className: "muted state", text: "Searching the knowledge base…" });
    const article = el(
      "article",
      { className: "turn", id: `turn-${id}`, "data-state": "streaming", "data-tokens": "0" },
      el("h2", { className: "question", text: question }),
      state,
      answerText,
    );
    $("thread").append(article);
    article.scrollIntoView({ block: "nearest" });
    let streamed = "";
    return {
      token(text) {
        streamed += text;
        answerText.textContent = streamed;
        state.textContent = "Answering…";
        article.dataset.tokens = String(Number(article.dataset.tokens) + 1);
      },
      finish(answer) {
        state.remove();
        renderAnswer(article, answerText, answer, id);
        article.dataset.state = answer.refused ? "refused" : "done";
      },
      fail(message) {
        state.className = "error";
        state.textContent = message;
        article.dataset.state = "failed";
      },
    };
  }

  function renderAnswer(article, answerText, answer, id) {
    const numbered = new Map();
    for (const source of answer.sources || []) numbered.set(source.number, source);
    for (const citation of answer.citations || []) {
      numbered.set(citation.number, { ...numbered.get(citation.number), ...citation });
    }
    const anchor = (n) => `#turn-${id}-source-${n}`;

    if (answer.question && answer.question !== article.querySelector(".question").textContent) {
      const asked = el("p", { className: "muted asked-as" }, "Asked as: ", el("q", { text: answer.question }));
      article.querySelector(".question").after(asked);
    }
    answerText.textContent = "";
    if (answer.refused) {
      article.classList.add("refused");
      answerText.append(
        el("strong", { className: "refusal", text: REFUSALS[answer.refusal_reason] || "kb did not answer." }),
        " ",
        el("span", { className: "muted", text: answer.text }),
      );
    } else {
      // Every [n] becomes a link to source n; everything else stays text.
      for (const part of answer.text.split(/(\[\d+\])/)) {
        const match = /^\[(\d+)\]$/.exec(part);
        const source = match && numbered.get(Number(match[1]));
        if (source) {
          const target = { ...targetOf(source), anchor: anchor(source.number) };
          const link = sourceLink(part, target, "marker");
          link.setAttribute("aria-label", `source ${source.number}: ${source.title || source.doc_id}`);
          answerText.append(link);
        } else {
          answerText.append(part);
        }
      }
    }
    const cited = answer.refused ? answer.sources || [] : answer.citations || [];
    if (!cited.length) return;
    const heading = answer.refused ? "Closest sources" : "Sources";
    const list = el("ol", { className: "sources" });
    for (const source of cited) {
      const target = { ...targetOf(numbered.get(source.number) || source), anchor: anchor(source.number) };
      list.append(sourceItem(source, target, `turn-${id}-source-${source.number}`));
    }
    article.append(el("h3", { className: "sources-title", text: heading }), list);
  }

  function targetOf(source) {
    return { doc_id: source.doc_id, node_id: source.node_id, span: source.span };
  }

  function sourceItem(source, target, id) {
    const place = [source.doc_id, where(source.span)].filter(Boolean).join(" · ");
    return el(
      "li",
      { id, value: source.number },
      el("span", { className: "number", text: `[${source.number}]` }),
      " ",
      sourceLink(source.title || source.doc_id, target),
      source.header_path ? el("span", { className: "section", text: source.header_path }) : null,
      el("span", { className: "place", text: place }),
      source.url ? externalLink(source.url) : null,
    );
  }

  function newThread() {
    thread.length = 0;
    $("thread").textContent = "";
    $("new-thread").hidden = true;
    $("question-label").textContent = "Question";
    closeSource();
    $("question").focus();
  }

  // -- source view ------------------------------------------------------------------------------------
  async function openSource(target, from) {
    opener = from || null;
    const panel = $("source-view");
    const body = $("sv-body");
    panel.hidden = false;
    document.body.classList.add("viewing");
    panel.dataset.state = "loading";
    $("sv-title").textContent = "Loading…";
    $("sv-meta").textContent = "";
    body.textContent = "";
    const params = new URLSearchParams();
    if (target.node_id) params.set("chunk", target.node_id);
    if (target.span && Number.isInteger(target.span.start) && Number.isInteger(target.span.end)) {
      params.set("start", String(target.span.start));
      params.set("end", String(target.span.end));
    }
    try {
      const view = await getJson(`/documents/${encodeURIComponent(target.doc_id)}?${params}`);
      renderSource(view);
      panel.dataset.state = "ready";
    } catch (error) {
      $("sv-title").textContent = "Source unavailable";
      body.append(el("p", { className: "error", text: error.message }));
      panel.dataset.state = "failed";
    }
    panel.focus({ preventScroll: true });
    // The chunk search found first; an answer's citation may cover its neighbours too (lighter).
    const first = body.querySelector(".retrieved .cited") || body.querySelector(".cited");
    if (first) first.scrollIntoView({ block: "center" });
  }

  function renderSource(view) {
    $("sv-title").textContent = view.title || view.path || view.doc_id;
    const meta = $("sv-meta");
    meta.append(el("span", { className: "place", text: view.doc_id }));
    if (view.source_format) meta.append(" · ", view.source_format);
    if (view.chunks_total > view.sections.length) {
      meta.append(` · chunks ${view.first_chunk + 1}–${view.last_chunk + 1} of ${view.chunks_total}`);
    }
    const link = view.url ? externalLink(view.url) : null;
    if (link) meta.append(" · ", link);
    const body = $("sv-body");
    let previousPath = null;
    for (const section of view.sections) {
      const classes = ["chunk", section.cited && "cited-chunk", section.retrieved && "retrieved"].filter(Boolean);
      const box = el("section", { className: classes.join(" "), "data-node": section.node_id });
      const path = section.header_path.join(" › ");
      const opensWithHeading = section.blocks.length && section.blocks[0].kind === "heading";
      if (path && path !== previousPath && !opensWithHeading) box.append(el("p", { className: "crumbs", text: path }));
      if (section.span && section.span.page_start) {
        box.append(el("p", { className: "page", text: where(section.span) }));
      }
      for (const block of section.blocks) box.append(renderBlock(block));
      previousPath = path;
      body.append(box);
    }
  }

  function renderBlock(block) {
    let node;
    if (block.kind === "heading") {
      node = el(`h${Math.min(6, block.level + 2)}`, { text: block.text });
    } else if (block.kind === "code" || block.kind === "table") {
      node = el("pre", { className: block.kind }, el("code", { text: block.text }));
    } else {
      node = el("p", { text: block.text });
    }
    if (block.cited) {
      node.classList.add("cited");
      node.setAttribute("aria-label", "cited passage");
    }
    return node;
  }

  function closeSource() {
    const panel = $("source-view");
    if (panel.hidden) return;
    panel.hidden = true;
    document.body.classList.remove("viewing");
    if (opener && document.contains(opener)) opener.focus();
    opener = null;
  }

  // -- search -----------------------------------------------------------------------------------------
  async function loadFacets() {
    const box = $("filters");
    try {
      const { fields } = await getJson("/facets");
      facetsLoaded = true;
      for (const old of box.querySelectorAll(".field")) old.remove();
      const offered = fields.filter((field) => field.values.length);
      $("filters-empty").hidden = offered.length > 0;
      for (const field of offered) {
        const id = `filter-${field.field}`;
        const select = el("select", { id, "data-field": field.field }, el("option", { value: "", text: "any" }));
        field.values.forEach((choice, index) => {
          select.append(el("option", { value: String(index), text: `${choice.value} (${choice.documents})` }));
        });
        select.choices = field.values.map((choice) => choice.value);  // keeps numbers and booleans typed
        box.append(el("div", { className: "field" }, el("label", { for: id, text: field.field }), select));
      }
    } catch (error) {
      $("filters-empty").textContent = error.message;
    }
  }

  function chosenFilters() {
    const filters = {};
    for (const select of $("filters").querySelectorAll("select")) {
      if (select.value !== "") filters[select.dataset.field] = select.choices[Number(select.value)];
    }
    return filters;
  }

  async function search(event) {
    event.preventDefault();
    const query = $("query").value.trim();
    if (!query) return;
    const results = $("results");
    const info = $("search-info");
    results.textContent = "";
    info.textContent = "Searching…";
    info.className = "muted";
    $("search-button").disabled = true;
    const body = { query, k: Number($("k").value), mode: $("mode").value, filters: chosenFilters() };
    try {
      const { hits, took_ms: took } = await getJson("/search", { method: "POST", body });
      info.textContent = `${hits.length} result${hits.length === 1 ? "" : "s"} in ${Math.round(took)} ms`;
      hits.forEach((hit, index) => results.append(hitItem(hit, index + 1)));
    } catch (error) {
      info.textContent = error.message;
      info.className = "error";
    } finally {
      $("search-button").disabled = false;
    }
  }

  function hitItem(hit, rank) {
    const id = `hit-${rank}`;
    const flat = hit.text.replace(/\s+/g, " ").trim();  // a snippet is a glimpse: one run of text
    const snippet = flat.length > 300 ? `${flat.slice(0, 300).trimEnd()}…` : flat;
    const chips = Object.entries(hit.metadata || {})
      .filter(([name]) => name !== "title")  // shown already, as the link
      .filter(([, value]) => ["string", "number", "boolean"].includes(typeof value) || Array.isArray(value))
      .map(([name, value]) => {
        const text = `${name}: ${Array.isArray(value) ? value.join(", ") : value}`;
        return el("span", { className: "chip", "data-field": name, text });
      });
    return el(
      "li",
      { id, className: "hit", "data-doc": hit.doc_id },
      el(
        "div",
        { className: "hit-head" },
        sourceLink(hit.title || hit.doc_id, { ...targetOf(hit), anchor: `#${id}` }),
        el("span", { className: "score", title: "fused score", text: hit.score.toFixed(3) }),
      ),
      hit.header_path ? el("span", { className: "section", text: hit.header_path }) : null,
      el("span", { className: "place", text: [hit.doc_id, where(hit.span)].filter(Boolean).join(" · ") }),
      el("p", { className: "snippet", text: snippet }),
      chips.length ? el("p", { className: "chips" }, chips) : null,
      hit.url ? externalLink(hit.url) : null,
    );
  }

  // -- status and reindex -----------------------------------------------------------------------------
  async function loadStatus() {
    const list = $("status-list");
    list.dataset.state = "loading";
    try {
      const status = await getJson("/status");
      caller = status.caller || null;
      showKey();
      renderStatus(status);
      list.dataset.state = "ready";
    } catch (error) {
      list.textContent = "";
      list.append(el("dt", { text: "Status" }), el("dd", { className: "error", text: error.message }));
      list.dataset.state = "failed";
      $("reindex").hidden = true;
    }
  }

  function renderStatus(status) {
    const list = $("status-list");
    list.textContent = "";
    const row = (name, ...value) => list.append(el("dt", { text: name }), el("dd", {}, ...value));
    const sources = (status.sources || []).map((s) => (typeof s === "string" ? { name: s } : s));
    row("Documents", String(status.documents));
    row("Chunks", String(status.chunks));
    row("Sources", sources.length ? el("ul", { className: "plain" }, sources.map(sourceRow)) : "none");
    const embedder = status.embedder || {};
    const model = [embedder.name, embedder.dimension && `${embedder.dimension} dimensions`, embedder.backend];
    row("Embedder", model.filter(Boolean).join(" · "));
    const reranker = status.reranker || {};
    const note = reranker.note ? el("span", { className: "muted block", text: reranker.note }) : null;
    row("Reranker", reranker.active ? "active" : "off", note);
    row("Last reindex", status.updated_at ? new Date(status.updated_at * 1000).toLocaleString() : "never");
    if (status.damage) row("Damage", el("span", { className: "error", text: status.damage }));
    if (caller) {
      const groups = caller.groups.length ? ` · groups ${caller.groups.join(", ")}` : "";
      row("Your key", `${caller.name || "unnamed"} · ${caller.role}${groups}`);
    }
    // Only an admin key gets the reindex form; the server refuses read keys anyway (403).
    const admin = Boolean(caller && caller.role === "admin");
    $("reindex").hidden = !admin;
    if (admin) {
      const select = $("reindex-source");
      const chosen = select.value;
      select.textContent = "";
      select.append(el("option", { value: "", text: "every source" }));
      for (const source of sources) select.append(el("option", { value: source.name, text: source.name }));
      select.value = chosen;
    }
  }

  function sourceRow(source) {
    const parts = [source.name];
    if (source.documents !== undefined) parts.push(`${source.documents} documents`);
    if (source.last_reindex) parts.push(`reindexed ${new Date(source.last_reindex * 1000).toLocaleString()}`);
    if (source.last_summary) parts.push(source.last_summary);
    return el("li", { text: parts.join(" · ") });
  }

  async function reindex(event) {
    event.preventDefault();
    const button = $("reindex-button");
    const report = $("reindex-report");
    const text = $("reindex-text");
    const body = { dry_run: $("reindex-dry").checked };
    if ($("reindex-source").value) body.source = $("reindex-source").value;
    button.disabled = true;
    report.hidden = true;
    report.textContent = "";
    $("reindex-progress").hidden = false;
    $("reindex-bar").removeAttribute("value");  // indeterminate until the plan counts documents
    text.textContent = "Starting…";
    try {
      let run = await getJson("/reindex", { method: "POST", body });
      const url = run.status_url;
      while (run.state === "running") {
        showProgress(run);
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        run = await getJson(url);
      }
      showProgress(run);
      showReport(run);
      loadStatus();
    } catch (error) {
      text.textContent = "";
      report.hidden = false;
      report.append(el("p", { className: "error", text: error.message }));
    } finally {
      button.disabled = false;
    }
  }

  function showProgress(run) {
    const { done, total, current } = run.progress;
    const bar = $("reindex-bar");
    const text = $("reindex-text");
    if (run.state === "running") {
      if (total) {
        bar.max = total;
        bar.value = done;
      }
      text.textContent = `Reindexing: ${done} of ${total || "?"} documents${current ? ` · ${current}` : ""}`;
      return;
    }
    bar.max = 1;
    bar.value = 1;
    if (run.state === "failed") {
      text.textContent = "Failed";
      return;
    }
    // Progress counts only the documents that needed work; the report counts every one it looked at.
    const r = run.report || {};
    text.textContent = `Done: ${r.documents || 0} documents checked${r.dry_run ? " (dry run)" : ""}`;
  }

  function showReport(run) {
    const report = $("reindex-report");
    report.hidden = false;
    if (run.state === "failed") {
      report.append(el("p", { className: "error", text: run.error || "the reindex failed" }));
      return;
    }
    const r = run.report || {};
    report.append(el("p", { className: "summary", text: run.summary || "done" }));
    const counts = el("dl", { className: "counts" });
    const count = (name, value) => counts.append(el("dt", { text: name }), el("dd", { text: String(value) }));
    const names = ["added", "changed", "deleted", "unchanged", "acl_changed", "rewritten", "adopted", "repaired"];
    for (const name of names) {
      if (typeof r[name] === "number" && (r[name] || ["added", "changed", "deleted", "unchanged"].includes(name))) {
        count(name.replace("_", " "), r[name]);
      }
    }
    count("chunks written", r.chunks_written || 0);
    if (typeof r.seconds === "number") count("seconds", r.seconds.toFixed(2));
    report.append(counts);
    if (r.refused_deletes) report.append(el("p", { className: "error", text: r.refused_deletes }));
    for (const skipped of r.skipped || []) {
      report.append(el("p", { className: "muted", text: `skipped ${skipped.doc_id}: ${skipped.reason}` }));
    }
  }

  // -- start ------------------------------------------------------------------------------------------
  function start() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("key-input").value.trim();
      if (!value) return;
      sessionStorage.setItem(KEY_STORAGE, value);
      $("key-input").value = "";
      notice("");
      showKey();
      facetsLoaded = false;
      route();
      loadStatus();
    });
    $("key-forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      caller = null;
      facetsLoaded = false;
      showKey();
      $("key-input").focus();
    });
    $("ask-form").addEventListener("submit", ask);
    $("question").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("ask-form").requestSubmit();
      }
    });
    $("new-thread").addEventListener("click", newThread);
    $("search-form").addEventListener("submit", search);
    $("status-refresh").addEventListener("click", loadStatus);
    $("reindex-form").addEventListener("submit", reindex);
    $("sv-close").addEventListener("click", closeSource);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape") closeSource();
    });
    window.addEventListener("hashchange", route);
    showKey();
    route();
    if (key()) loadStatus();
  }

  start();
})();
