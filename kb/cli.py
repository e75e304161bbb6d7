"""The ``kb`` command: a thin face over :class:`kb.KnowledgeBase`.

kb source add runbooks ~/src/runbooks --url "https://git.example.com/ops/runbooks/blob/main/{path}"
kb reindex runbooks --kb indexes/handbook          # or a folder, or --all
kb ingest docs/ --kb indexes/handbook
kb search "how do I rotate the API key?" --kb indexes/handbook --filter product=api
kb status --kb indexes/handbook
kb migrate --from indexes/handbook --to http://qdrant:6333
kb serve --kb indexes/handbook --docs docs/ --port 8000
kb demo
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

from kb.acl import Principal
from kb.citations import Answer
from kb.document import Span
from kb.embedding import ModelIdentity
from kb.errors import KbError, PartialReindexError
from kb.indexing import IngestReport, Progress
from kb.knowledge_base import DEFAULT_INDEX, Hit, KnowledgeBase
from kb.settings import RetrievalMode, Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Answers from your own documents, cited.")
source_app = typer.Typer(no_args_is_help=True, help="The sources of an index: named folders with their own settings.")
app.add_typer(source_app, name="source")
# Markup off: paths, headings and document text are printed as they are ("docs/[wip].md", "[[install]]"), never
# read as style tags or terminal links; kb's own styling is given as Text parts.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)

AsOption = Annotated[
    list[str] | None,
    typer.Option("--as", help="Answer as a reader in GROUP (repeatable): only documents its groups may read."),
]
KbOption = Annotated[
    Path, typer.Option("--kb", envvar="KB_INDEX", help="Index folder (created on first ingest).", show_default=True)
]


def _fail(message: str) -> NoReturn:
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def _open(path: Path, for_rebuild: bool = False, create: bool = False) -> Iterator[KnowledgeBase]:
    """The index at ``path``; only commands that write documents create a missing one."""
    try:
        with KnowledgeBase.open(path, for_rebuild=for_rebuild, create=create) as kb:
            if kb.damage.damaged:
                err_console.print(Text.assemble(("warning:", "yellow"), " ", kb.damage.describe(str(path))))
            yield kb
    except KbError as exc:
        _fail(str(exc))


def _parse_pairs(pairs: list[str] | None, option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"{option} {pair!r}: expected KEY=VALUE")
        values = [v for v in value.split(",") if v]
        out[key] = values if len(values) > 1 else value
    return out


AclOption = Annotated[
    list[str] | None,
    typer.Option("--acl", help="Group that may read the documents (repeatable; 'public' for everyone): a ceiling."),
]


@app.command()
def ingest(
    folder: Annotated[
        Path, typer.Argument(help="Folder of documents (Markdown, reST, HTML, AsciiDoc, PDF, Word, text).")
    ],
    kb_path: KbOption = DEFAULT_INDEX,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="KEY=VALUE added to every document.")] = None,
    acl: AclOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Add new and changed documents under FOLDER (its source, named after it) to the knowledge base."""
    metadata = _parse_pairs(meta, "--meta")
    with _open(kb_path, create=True) as kb:
        report = _with_progress(
            lambda progress: kb.ingest(folder, metadata or None, progress=progress, acl=acl), as_json, "ingest"
        )
        _finish_report(report, kb, as_json)


@app.command()
def reindex(
    target: Annotated[
        str | None, typer.Argument(help="A source name, or a folder (registered as a source on first use).")
    ] = None,
    kb_path: KbOption = DEFAULT_INDEX,
    every: Annotated[bool, typer.Option("--all", help="Every source of the index (the docs-publishing job).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print the plan.")] = False,
    full: Annotated[
        bool, typer.Option("--full", help="Rebuild everything (after changing embedder or chunking).")
    ] = False,
    repair: Annotated[
        bool, typer.Option("--repair", help="Re-read and re-embed what a damaged store lost, then mirror.")
    ] = False,
    allow_mass_delete: Annotated[
        bool, typer.Option("--allow-mass-delete", help="Delete even more than max_delete_fraction of a source.")
    ] = False,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Hash every file (no size+mtime fast path); parse again files that failed."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Make the index mirror a source (or --all): add new, replace changed and delete removed documents.

    Exits 3 when the mass-delete guard refused deletions (nothing was deleted; see the message)."""
    if (target is None) == (not every):
        if target is None:
            _fail("name a source or folder to reindex, or pass --all")
        _fail("pass either a source/folder or --all, not both")
    # A folder to mirror, or sources declared in kb.toml, may start a new index; a source name alone may not.
    create = (target is not None and Path(target).is_dir()) or _declares_sources(kb_path, target)
    with _open(kb_path, for_rebuild=full, create=create) as kb:
        options = dict(full=full, dry_run=dry_run, allow_mass_delete=allow_mass_delete, repair=repair, verify=verify)
        failed: PartialReindexError | None = None

        def work(progress: Progress) -> IngestReport:
            nonlocal failed
            try:
                return kb.reindex(target, progress=progress, **options)
            except PartialReindexError as exc:  # reported like a whole run, then the failure: exit 2
                failed = exc
                return exc.report  # type: ignore[return-value]

        report = _with_progress(work, quiet=as_json or dry_run, label="reindex")
        if as_json:
            ids = {"added_ids": report.added, "changed_ids": report.changed, "deleted_ids": report.deleted}
            print(json.dumps(report.as_dict() | ids | ({"error": str(failed)} if failed else {}), indent=2))
        elif dry_run:
            console.print(f"plan: {report.summary()}" + (" (full rebuild)" if full else ""))
            for label, ids in (("add", report.added), ("change", report.changed), ("delete", report.deleted)):
                for doc_id in ids[:50]:
                    console.print(f"  {label:6} {doc_id}")
                if len(ids) > 50:
                    console.print(f"  … and {len(ids) - 50} more to {label}")
            _print_refusal(report)
        else:
            _print_report(report, kb)
        if failed is not None:
            _fail(str(failed))
        if report.stopped:
            raise typer.Exit(3)


def _declares_sources(kb_path: Path, name: str | None) -> bool:
    """Whether kb.toml declares sources (``name`` among them, if given): then reindex builds a new index."""
    try:
        declared = {source.name for source in Settings.load(kb_path).sources}
    except KbError:
        return False  # opening the index says what is wrong with its settings
    return bool(declared) if name is None else name in declared


def _finish_report(report: IngestReport, kb: KnowledgeBase, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_report(report, kb)


def _print_refusal(report: IngestReport) -> None:
    if report.refused_deletes:
        err_console.print(Text.assemble(("deletions refused:", "bold red"), " ", report.refused_deletes))


def _ingest_with_progress(kb: KnowledgeBase, folder: Path, metadata: dict[str, Any], quiet: bool) -> IngestReport:
    return _with_progress(lambda progress: kb.ingest(folder, metadata or None, progress=progress), quiet, "ingest")


def _with_progress(work: Callable[[Progress], IngestReport], quiet: bool, label: str) -> IngestReport:
    bar = RichProgress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}", style="dim", markup=False),
        console=err_console,
        transient=True,
        disable=quiet,
    )
    with bar:
        task = bar.add_task("", total=None)

        def update(done: int, total: int, doc_id: str) -> None:
            bar.update(task, completed=done, total=total, description=doc_id[-60:])

        try:
            return work(update)
        except KbError as exc:
            bar.stop()
            _fail(str(exc))


def _print_report(report: IngestReport, kb: KnowledgeBase) -> None:
    table = Table(title=f"{kb.path}", show_header=False, box=None)
    table.add_row("documents", f"{report.documents} ({report.summary()})")
    table.add_row("chunks written", f"{report.chunks_written} ({report.chunks_reused} vectors reused, not re-embedded)")
    table.add_row("chunks in index", str(kb.store.count()))
    table.add_row("skipped files", str(len(report.skipped)))
    if report.ignored:
        kinds = ", ".join(f"{ext} {n}" for ext, n in sorted(report.ignored.items(), key=lambda kv: -kv[1])[:8])
        table.add_row("ignored files", f"{sum(report.ignored.values())} ({kinds}): no include pattern picks them")
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in report.timings.items())
    table.add_row("time", f"{report.seconds:.2f}s ({stages})")
    console.print(table)
    if not report.documents and not report.skipped and report.ignored:
        err_console.print(
            Text.assemble(
                ("warning:", "yellow"),
                f" no documents: none of the {sum(report.ignored.values())} files matched an include pattern "
                "(the include setting, or the source's own); widen it to read them",
            )
        )
    for skipped in report.skipped[:20]:
        console.print(Text.assemble("  ", ("skipped", "yellow"), f" {skipped.doc_id!r}: {skipped.reason}"))
    if len(report.skipped) > 20:
        console.print(f"  … and {len(report.skipped) - 20} more (kb ingest --json lists all)")
    _print_refusal(report)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="Question or keywords.")],
    kb_path: KbOption = DEFAULT_INDEX,
    k: Annotated[int, typer.Option("-k", help="Number of results.")] = 5,
    filters: Annotated[
        list[str] | None, typer.Option("--filter", help="KEY=VALUE[,VALUE] on front-matter fields.")
    ] = None,
    mode: Annotated[RetrievalMode | None, typer.Option(help="Legs to use (default from settings).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON.")] = False,
    groups: AsOption = None,
    rerank: Annotated[bool, typer.Option("--rerank", help="Reorder with the cross-encoder (if available).")] = False,
) -> None:
    """Search the knowledge base and print the best chunks with where they come from."""
    where = _parse_pairs(filters, "--filter")
    user = Principal(groups=groups) if groups is not None else None
    with _open(kb_path) as kb:
        try:
            hits = kb.search(query, k=k, filters=where or None, mode=mode, user=user, rerank=rerank)
            if rerank and kb.reranker is None:
                err_console.print(Text.assemble(("note:", "yellow"), " ", kb.reranker_note))
        except KbError as exc:
            _fail(str(exc))
        if as_json:
            print(json.dumps([asdict(h) for h in hits], indent=2, ensure_ascii=False))
        else:
            _print_hits(hits)


def _where(doc_id: str, span: Span) -> str:
    """``source:path:12-18`` for text, ``source:path p. 3`` for paged documents."""
    return f"{doc_id} {span.where()}" if span.page_start else f"{doc_id}:{span.line_start}-{span.line_end}"


def _print_hits(hits: list[Hit]) -> None:
    if not hits:
        console.print("no results", style="dim")
    for rank, hit in enumerate(hits, start=1):
        where = _where(hit.doc_id, hit.span)
        rerank = f", rerank {hit.rerank_score:.3f}" if hit.rerank_score is not None else ""
        console.print(
            Text.assemble(
                (f"{rank}.", "bold"), " ", (where, "cyan"), f"  {hit.header_path or hit.title}  ",
                (f"score {hit.score:.4f}{rerank}", "dim"),
            )
        )  # fmt: skip
        snippet = " ".join(hit.text.split())
        console.print(f"   {snippet[:200]}{'…' if len(snippet) > 200 else ''}")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="A question about the documents.")],
    kb_path: KbOption = DEFAULT_INDEX,
    filters: Annotated[
        list[str] | None, typer.Option("--filter", help="KEY=VALUE[,VALUE] on front-matter fields.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole Answer as JSON.")] = False,
    groups: AsOption = None,
    chat: Annotated[
        bool,
        typer.Option("--chat", help="Then read follow-up questions from stdin (one per line; empty line ends)."),
    ] = False,
) -> None:
    """Answer QUESTION from the knowledge base, citing the sections used (streams as it generates)."""
    where = _parse_pairs(filters, "--filter")
    user = Principal(groups=groups) if groups is not None else None
    with _open(kb_path) as kb:
        messages: list[dict[str, str]] = []
        while True:
            messages.append({"role": "user", "content": question})
            try:
                if as_json:
                    answer = kb.chat(messages, filters=where or None, user=user)
                    print(json.dumps(answer.as_dict(), ensure_ascii=False, indent=None if chat else 2), flush=True)
                else:
                    streamed: list[str] = []
                    answer = kb.chat(messages, filters=where or None, on_token=streamed_to(streamed), user=user)
                    console.print()
                    if answer.question != question.strip():
                        console.print(f"(asked as: {answer.question})", style="dim")
                    _print_answer(answer, streamed="".join(streamed))
            except KbError as exc:
                _fail(str(exc))
            if not chat:
                return
            messages.append({"role": "assistant", "content": answer.text})
            follow_up = _read_follow_up(as_json)
            if not follow_up:
                return
            question = follow_up


def _read_follow_up(quiet: bool) -> str:
    """The next follow-up question from stdin; "" at the end of input or on an empty line."""
    if not quiet:
        console.print(">", style="bold", end=" ")
    line = sys.stdin.readline()
    return line.strip()


def streamed_to(sink: list[str]) -> Callable[[str], None]:
    return lambda piece: _stream(piece, sink)


def _stream(piece: str, sink: list[str]) -> None:
    sink.append(piece)
    console.print(piece, end="", soft_wrap=True)


def _print_answer(answer: Answer, streamed: str = "") -> None:
    """The answer (again if kb changed its markers after streaming), then its sources with path and lines."""
    if not streamed:
        console.print(answer.text, soft_wrap=True)
    elif answer.text.strip() != streamed.strip():
        label = "refused" if answer.refused else "with checked citations"
        if answer.refusal_reason == "unsupported":
            label = "withdrawn, no source supports the text above"
        console.print(f"── {label}:", style="dim")
        console.print(answer.text, soft_wrap=True)
    if answer.citations:
        console.print("Sources", style="bold")
    for c in answer.citations:
        where = (_where(c.doc_id, c.span), "cyan")
        console.print(
            Text.assemble(
                f"  [{c.number}] ", where, f"  {c.header_path or c.title}", (f"  {c.url}" if c.url else "", "dim")
            )
        )
    if answer.refused and answer.sources:
        closest = ", ".join(f"{s.doc_id} ({s.relevance:.2f})" for s in answer.sources[:3])
        console.print(f"refused ({answer.refusal_reason}); closest sections: {closest}", style="dim")
    if answer.uncited_sentences:
        console.print(f"{len(answer.uncited_sentences)} sentence(s) cite no source", style="yellow")
    t = answer.timings
    stages = ", ".join(
        f"{k} {t[k]:.0f} ms" for k in ("embed", "retrieve", "rerank", "first_token", "generate", "total") if k in t
    )
    console.print(f"{answer.backend}; {stages}", style="dim")


@app.command()
def status(kb_path: KbOption = DEFAULT_INDEX, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show index statistics and the settings in force."""
    with _open(kb_path) as kb:
        state = kb.status()
    if as_json:
        print(json.dumps(asdict(state), indent=2))
        return
    table = Table(show_header=False, box=None)
    table.add_row("index", state.path)
    table.add_row("store", ", ".join(f"{k}={v}" for k, v in state.store.items()))
    reranker = state.reranker
    table.add_row(
        "reranker",
        f"{reranker['model']} ({reranker['backend']})" if reranker["active"] else f"off: {reranker['note']}",
    )
    table.add_row("documents", str(state.documents))
    table.add_row("chunks", str(state.chunks))
    table.add_row("disk", f"{state.disk_bytes / 1e6:.1f} MB")
    table.add_row("embedder", ModelIdentity.recorded(state.embedder).describe())  # with the backend that runs it
    table.add_row("chunking", ", ".join(f"{k}={v}" for k, v in state.chunking.items()))
    table.add_row("last ingest", _when(state.updated_at))
    if state.legacy_documents:
        table.add_row(
            "legacy", f"{state.legacy_documents} documents indexed before sources: reindex their folder to adopt them"
        )
    if state.damage:
        table.add_row(Text("damage", style="red"), state.damage)
    console.print(table)
    _print_sources(state.sources)
    settings = Table("setting", "value", title="settings (defaults < kb.toml < KB_* < arguments)", box=None)
    for key, value in state.settings.items():
        settings.add_row(key, json.dumps(value))
    console.print(settings)


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "never"


def _print_sources(rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("no sources yet: kb source add NAME FOLDER", style="dim")
        return
    table = Table("source", "folder", "documents", "chunks", "last reindex", "skipped", "acl", "url", box=None)
    for row in rows:
        table.add_row(
            row["name"],
            row["path"] or f"({row['kind']})",
            str(row["documents"]),
            str(row["chunks"]),
            _when(row["last_reindex"]),
            str(len(row["skipped"])),
            ",".join(row["acl"]) if row["acl"] is not None else "(policy)",
            row["url"] or "",
        )
    console.print(table)


SourceName = Annotated[str, typer.Argument(help="Source name: letters, digits, '.', '_', '-'.")]


@source_app.command("add")
def source_add(
    name: SourceName,
    folder: Annotated[Path, typer.Argument(help="The folder of documents.")],
    kb_path: KbOption = DEFAULT_INDEX,
    url: Annotated[str, typer.Option(help="Citation URL template: {path}, {stem}, {anchor}, {source}.")] = "",
    acl: AclOption = None,
    include: Annotated[list[str] | None, typer.Option("--include", help="File name glob (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="File/folder name glob (repeatable).")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="KEY=VALUE added to every document.")] = None,
    anchor_style: Annotated[
        str, typer.Option(help="How headings become URL anchors: github, mkdocs, sphinx.")
    ] = "github",
    asciidoc: Annotated[
        list[str] | None, typer.Option("--asciidoc", help="Glob of files read as AsciiDoc (e.g. '*.txt').")
    ] = None,
    acl_file: Annotated[str, typer.Option(help="ACL rules file, relative to the folder.")] = "kb-acl.toml",
) -> None:
    """Register FOLDER as source NAME (nothing is indexed until kb reindex NAME)."""
    options = dict(url=url, acl=acl, include=include, exclude=exclude, metadata=_parse_pairs(meta, "--meta"),
                   anchor_style=anchor_style, asciidoc_patterns=asciidoc or [], acl_file=acl_file)  # fmt: skip
    with _open(kb_path, create=True) as kb:
        try:
            source = kb.add_source(name, folder, **options)
        except KbError as exc:
            _fail(str(exc))
        console.print(f"source {source.name!r} → {source.path}. Index it with: kb reindex {source.name} --kb {kb_path}")


@source_app.command("set")
def source_set(
    name: SourceName,
    kb_path: KbOption = DEFAULT_INDEX,
    path: Annotated[Path | None, typer.Option("--path", help="The folder moved here (nothing is re-embedded).")] = None,
    url: Annotated[str | None, typer.Option(help="Citation URL template.")] = None,
    acl: AclOption = None,
    include: Annotated[list[str] | None, typer.Option("--include")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="KEY=VALUE (replaces the metadata).")] = None,
    anchor_style: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Change a source's settings; the next reindex applies them (payload updates, no re-embedding)."""
    changes: dict[str, Any] = {"path": str(path) if path else None, "url": url, "acl": acl, "include": include,
                               "exclude": exclude, "metadata": _parse_pairs(meta, "--meta") if meta else None,
                               "anchor_style": anchor_style}  # fmt: skip
    with _open(kb_path) as kb:
        try:
            source = kb.update_source(name, **{k: v for k, v in changes.items() if v is not None})
        except KbError as exc:
            _fail(str(exc))
        console.print(f"source {source.name!r} updated; run kb reindex {source.name} --kb {kb_path} to apply it")


@source_app.command("list")
def source_list(kb_path: KbOption = DEFAULT_INDEX, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Name, folder, documents, chunks, last reindex and skipped files of each source."""
    with _open(kb_path) as kb:
        rows = kb.source_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        _print_sources(rows)


@source_app.command("remove")
def source_remove(name: SourceName, kb_path: KbOption = DEFAULT_INDEX) -> None:
    """Delete source NAME and its documents from the index (the folder itself is not touched)."""
    with _open(kb_path) as kb:
        try:
            deleted = kb.remove_source(name)
        except KbError as exc:
            _fail(str(exc))
    console.print(f"source {name!r} removed with its {deleted} documents; other sources untouched")


@source_app.command("rename")
def source_rename(old: SourceName, new: SourceName, kb_path: KbOption = DEFAULT_INDEX) -> None:
    """Rename a source: its documents move to NEW:path ids, no re-embedding."""
    with _open(kb_path) as kb:
        report = _with_progress(lambda progress: kb.rename_source(old, new), quiet=False, label="rename")
        console.print(f"source {old!r} is now {new!r}: {report.summary()}")


@app.command()
def migrate(
    source: Annotated[Path, typer.Option("--from", help="Embedded index folder to copy.")],
    target: Annotated[str, typer.Option("--to", help="Qdrant server URL (http://qdrant:6333) or local:PATH.")],
    collection: Annotated[str, typer.Option(help="Target collection (default: the folder's name).")] = "",
    api_key: Annotated[str, typer.Option(envvar="KB_QDRANT_API_KEY", help="Qdrant server API key.")] = "",
    replace: Annotated[bool, typer.Option(help="Swap out a target collection that already holds points.")] = False,
) -> None:
    """Copy an embedded knowledge base to a Qdrant server (points, vectors, payload, manifest), verified."""
    from kb.migrate import migrate as run_migration

    try:
        report = run_migration(source, target, collection, api_key, replace)
    except KbError as exc:
        _fail(str(exc))
    console.print(
        f"copied {report.points:,} points of {report.documents:,} documents into collection "
        f"{report.collection!r} at {report.target} in {report.seconds:.1f} s; verified: counts and every "
        "document version match."
    )
    console.print(f"Use it: {report.how_to_use()}.")


@app.command()
def serve(
    kb_path: KbOption = DEFAULT_INDEX,
    docs: Annotated[Path | None, typer.Option(help="Documents folder that POST /reindex mirrors.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    allow_anonymous: Annotated[
        bool, typer.Option(help="Without api_keys, let anyone read (never reindex). For local trials only.")
    ] = False,
    tune: Annotated[
        bool, typer.Option("--tune", help="Meanwhile run kb tune at the lowest CPU priority (see kb tune --help).")
    ] = False,
) -> None:
    """Serve the web page at / and the HTTP API (OpenAPI at /docs): /ask, /chat, /search, /reindex, /status."""
    import uvicorn

    from kb.api import cap_malloc_arenas, create_app

    cap_malloc_arenas()  # before the embedder's and the request pool's threads exist
    with _open(kb_path, create=docs is not None) as kb:
        if not kb.settings.api_keys and not allow_anonymous:
            _fail(
                "no api_keys configured: add [[api_keys]] entries (key, role = read|admin, groups) to "
                f'{kb_path}/kb.toml or set KB_API_KEYS=\'[{{"key": "...", "role": "admin"}}]\'; '
                "or pass --allow-anonymous for a local trial"
            )
        if tune:
            from kb.tuning.pipeline import start_background

            start_background(kb)  # in this process: the index is held here; an install swaps the reranker
            err_console.print(f"kb tune runs in the background (nice 19): kb tune --kb {kb_path} --status")
        api = create_app(kb, docs, allow_anonymous)
        _check_can_listen(host, port)
        try:
            uvicorn.run(api, host=host, port=port, log_level="info")
        except SystemExit as exc:  # uvicorn's start-up failure is 3, which kb keeps for the mass-delete guard
            if exc.code not in (0, None):
                _fail(f"the server could not start on {host}:{port} (uvicorn's message is above)")
            raise


def _check_can_listen(host: str, port: int) -> None:
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port} ({exc.strerror or exc}): pass a free --port, or stop what holds it")


DEMO_SEARCHES = [
    ("What does error E4012 mean?", None),
    ("billing.retry_limit", None),
    ("--dry-run", None),
    ("how do I rotate the API key?", {"product": "api"}),
]


DEMO_QUESTIONS = [
    "What does error E4012 mean and how do I fix it?",
    "How do I roll back a bad deployment of billing-svc?",
    "Do you support cryptocurrency payments?",
    "How do I configure Kubernetes pod autoscaling with KEDA?",  # not in the sample: kb should say so
]


@app.command()
def demo(
    kb_path: Annotated[Path, typer.Option("--kb", help="Where to build the demo index.")] = Path("indexes/demo"),
) -> None:
    """Ingest the bundled sample knowledge base (a fictional payments company), search it, ask it questions."""
    from kb.samples import sample_kb_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _open(kb_path, create=True) as kb:
        console.rule(Text("kb demo: ingest the sample knowledge base", style="bold"))
        report = _ingest_with_progress(kb, sample_kb_path(), {}, quiet=False)
        _print_report(report, kb)
        for query, filters in DEMO_SEARCHES:
            console.rule(Text.assemble(("search", "bold"), f" {query!r}" + (f" filters={filters}" if filters else "")))
            _print_hits(kb.search(query, k=3, filters=filters))
        for question in DEMO_QUESTIONS:
            console.rule(Text.assemble(("ask", "bold"), f" {question!r}"))
            streamed: list[str] = []
            answer = kb.ask(question, on_token=lambda piece, sink=streamed: _stream(piece, sink))
            console.print()
            _print_answer(answer, streamed="".join(streamed))
    console.rule()
    console.print(f'Index kept in {kb_path}. Try: kb search "how are refunds handled?" --kb {kb_path}')


@app.command("eval")
def eval_command(
    question_set: Annotated[Path | None, typer.Argument(help="JSONL question set (see evals/README.md).")] = None,
    kb_path: KbOption = DEFAULT_INDEX,
    report: Annotated[Path | None, typer.Option("--report", help="Report folder to write.")] = None,
    corpus: Annotated[Path | None, typer.Option(help="Corpus folder (default: from <set>.meta.json).")] = None,
    baseline: Annotated[bool, typer.Option(help="Also run the stock LlamaIndex recipe.")] = True,
    answers: Annotated[int, typer.Option(help="Answer this many questions with kb (0 = retrieval only).")] = 0,
    baseline_answers: Annotated[
        int, typer.Option(help="Answer this many of those with the baseline too (slow: several LLM calls each).")
    ] = 0,
    split: Annotated[str, typer.Option(help="Questions to use: test, tune or all.")] = "test",
    baseline_256: Annotated[
        bool, typer.Option(help="Also run the stock recipe with SentenceSplitter(chunk_size=256), what MiniLM reads.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the answer sample and the bootstrap intervals.")] = 13,
    compare: Annotated[tuple[Path, Path] | None, typer.Option(help="Diff two report folders (A B).")] = None,
    render: Annotated[
        Path | None, typer.Option(help="Write a report folder's report.md again from its results (nothing re-run).")
    ] = None,
) -> None:
    """Evaluate retrieval (and answers) on a question set, next to the stock LlamaIndex recipe."""
    from kb.evaluation.cli import compare_reports, run_evaluation

    if compare is not None:
        print(compare_reports(*compare))
        return
    if render is not None:
        from kb.evaluation.report import rerender

        if question_set is not None:
            _fail("--render rewrites an existing report and runs nothing: give it without a question set")

        if not (render / "results.jsonl").is_file() or not (render / "summary.json").is_file():
            _fail(f"{render}: not a report folder (it needs results.jsonl and summary.json from kb eval --report)")
        try:
            rerender(render)
        except (ValueError, KeyError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            _fail(f"{render}: its results.jsonl or summary.json is not what kb eval writes ({exc!r})")
        console.print(f"report written to {render}/report.md")
        return
    if question_set is None:
        _fail("give a question set, or --compare A B, or --render FOLDER")
    try:
        run_evaluation(
            question_set, kb_path, report, corpus, baseline, answers, baseline_answers, split, console, err_console,
            baseline_256, seed,
        )  # fmt: skip
    except KbError as exc:
        _fail(str(exc))


# -- kb tune: adapt the reranker to the index's own documents (kb/tuning) ---------------------------------


@app.command("tune")
def tune_command(
    kb_path: KbOption = DEFAULT_INDEX,
    status_only: Annotated[bool, typer.Option("--status", help="Progress and ETA of the current/last run.")] = False,
    report_only: Annotated[bool, typer.Option("--report", help="Print the last run's report (Markdown).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="--status/--report as JSON.")] = False,
    questions: Annotated[int, typer.Option(help="Questions to write, train and gate on.")] = 1000,
    minutes: Annotated[float | None, typer.Option(help="Budget of this run; it ends with a verdict.")] = None,
    layers: Annotated[int, typer.Option(help="Keep the first N of MiniLM's 6 layers (3: faster reranking).")] = 6,
    steps: Annotated[int | None, typer.Option(help="Cap on the training steps.")] = None,
    epochs: Annotated[float, typer.Option(help="Passes over the training questions.")] = 2.0,
    batch: Annotated[int, typer.Option(help="Questions per training step.")] = 8,
    group: Annotated[int, typer.Option(help="Passages per question: the positive + N-1 mined negatives.")] = 8,
    heldout: Annotated[float, typer.Option(help="Share of the chunks held out for the gate.")] = 0.2,
    min_heldout: Annotated[int, typer.Option(help="Fewer held-out questions: no verdict.")] = 20,
    min_gain: Annotated[float, typer.Option(help="nDCG@10 the reranker must add to fused to be installed.")] = 0.03,
    max_hit3_drop: Annotated[float, typer.Option(help="hit@3 the reranker may lose against fused.")] = 0.0,
    install: Annotated[bool, typer.Option(help="Install the model when the gate passes.")] = True,
    checkpoint_seconds: Annotated[float, typer.Option(help="Training checkpoint interval (0: every step).")] = 60.0,
    llm_model_path: Annotated[str, typer.Option(help="GGUF that writes questions (default: the index's LLM).")] = "",
    threads: Annotated[int, typer.Option(help="Training threads (0: every core).")] = 0,
    device: Annotated[str, typer.Option(help="Training device: auto (a CUDA GPU if any), cpu, cuda.")] = "auto",
    llm_threads: Annotated[int, typer.Option(help="llama.cpp threads (0: its default).")] = 0,
    llm_max_tokens: Annotated[int, typer.Option(help="Tokens the LLM may write per chunk (two questions).")] = 96,
    work: Annotated[Path | None, typer.Option(help="Work folder (default: INDEX/tune).")] = None,
    questions_dir: Annotated[Path | None, typer.Option(help="Folder of questions.jsonl (default: --work).")] = None,
    background: Annotated[bool, typer.Option(help="Run detached at the lowest CPU priority (nice 19).")] = False,
    config_file: Annotated[Path | None, typer.Option(hidden=True, help="TuneConfig as JSON (--background).")] = None,
) -> None:
    """Adapt the reranker to this index's documents, offline: questions → hard negatives → train → gate → install.

    Resumable (run it again after a kill), --status shows progress with an ETA, --report what it learned."""
    from kb.tuning.pipeline import TuneConfig, Tuner, load_report, render_markdown

    folder = work or kb_path / "tune"
    if config_file is not None:
        config = TuneConfig.from_dict(json.loads(config_file.read_text()))
    else:
        try:
            config = TuneConfig(
                questions=questions, minutes=minutes, layers=layers, max_steps=steps, epochs=epochs, batch=batch,
                group=group, heldout=heldout, min_heldout=min_heldout, min_gain=min_gain, max_hit3_drop=max_hit3_drop,
                install=install, checkpoint_seconds=checkpoint_seconds, llm_model_path=llm_model_path,
                threads=threads, llm_threads=llm_threads, llm_max_tokens=llm_max_tokens, device=device,
            )  # fmt: skip
        except KbError as exc:
            _fail(str(exc))
    if not kb_path.is_dir():
        _fail(f"no index at {kb_path}; kb tune adapts the reranker of an existing index (kb ingest DOCS first)")
    tuner = Tuner(kb_path, config, folder=folder, questions_dir=questions_dir)
    if status_only:
        _print_tune_status(tuner.status(), as_json)
        return
    if report_only:
        report = load_report(kb_path, folder)
        if report is None:
            _fail(f"no kb tune report in {folder} yet: run kb tune --kb {kb_path}")
        print(json.dumps(report.as_dict(), indent=2) if as_json else render_markdown(report))
        return
    if background:
        _tune_in_background(kb_path, folder, questions_dir, config)
        return
    try:
        report = _with_tune_progress(
            lambda on_event: Tuner(kb_path, config, folder=folder, questions_dir=questions_dir, on_event=on_event).run()
        )
    except KbError as exc:
        _fail(str(exc))
    print(render_markdown(report))


def _with_tune_progress(work: Callable[[Callable[[str, int, int, str], None]], Any]) -> Any:
    """Bars with an ETA per stage on a terminal; otherwise (a log file) a line per stage every 15 s."""
    from rich.progress import TimeRemainingColumn

    interactive = err_console.is_terminal
    bar = RichProgress(
        TextColumn("[bold]{task.fields[stage]:9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}", style="dim", markup=False),
        console=err_console, disable=not interactive,
    )  # fmt: skip
    tasks: dict[str, Any] = {}
    printed: dict[str, float] = {}

    def on_event(stage: str, done: int, total: int, message: str) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(message, total=total, stage=stage)
        bar.update(tasks[stage], completed=done, total=total, description=message[-60:])
        if not interactive and (time.monotonic() - printed.get(stage, 0.0) > 15 or done >= total):
            printed[stage] = time.monotonic()
            err_console.print(f"{time.strftime('%H:%M:%S')} {stage} {done}/{total} {message}")

    with bar:
        return work(on_event)


def _tune_in_background(kb_path: Path, folder: Path, questions_dir: Path | None, config: Any) -> None:
    import subprocess
    from dataclasses import asdict as as_dict

    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "background-config.json"
    config_file.write_text(json.dumps(as_dict(config)))
    command = [sys.executable, "-m", "kb.cli", "tune", "--kb", str(kb_path), "--work", str(folder),
               "--config-file", str(config_file)]  # fmt: skip
    if questions_dir is not None:
        command += ["--questions-dir", str(questions_dir)]
    with (folder / "tune.log").open("a") as log:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                 preexec_fn=lambda: os.nice(19))  # fmt: skip
    console.print(f"kb tune runs in the background: pid {child.pid}, nice 19, log {folder / 'tune.log'}. "
                  f"Follow it with: kb tune --kb {kb_path} --status")  # fmt: skip


def _print_tune_status(state: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(state, indent=2))
        return
    running = "running" if state["running"] else ("finished" if state["finished"] else "not running")
    table = Table(show_header=False, box=None)
    table.add_row("tune", f"{state['folder']} ({running}; stage {state['stage']}"
                  + (f", pid {state['pid']}, nice {state['nice']}" if state["running"] else "") + ")")  # fmt: skip
    q = state["questions"]
    eta = f", ETA {q['eta_minutes']} min" if q.get("eta_minutes") else ""
    table.add_row("questions", f"{q['written']} of {q['target']} ({q['chunks_tried']} chunks tried{eta})")
    if state.get("negatives"):
        table.add_row("negatives", f"{state['negatives']['done']} of {state['negatives']['total']} questions mined")
    t = state["train"]
    if t.get("steps"):
        per = f", {t['seconds_per_step']} s/step, ETA {t['eta_minutes']} min" if t.get("seconds_per_step") else ""
        saved = f"checkpoint at {t['checkpointed']}"
        table.add_row("train", f"step {t['step']} of {t['steps']} ({saved}), loss {t['loss']}{per}")
    if state.get("gate"):
        g = state["gate"]
        table.add_row("gate", f"{'pass' if g['passed'] else 'fail'}, blend {g['blend']}: {g['reason']}")
    table.add_row("installed", state["installed"] or "no tuned reranker in kb.toml")
    if state.get("updated_at"):
        table.add_row("updated", _when(state["updated_at"]))
    console.print(table)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
