"""Reindex benchmark on a real documentation set (postgresql-doc-15: 1,167 HTML pages, ~11k chunks).

    python scripts/bench_reindex.py            # builds the index once (about 7 minutes on 2 cores), then measures
    python scripts/bench_reindex.py --reuse    # re-use .bench/reindex/index from an earlier run

Prints and writes ``evals/reports/bench-reindex.md``: full index time; reindex with nothing changed;
reindex after touching one document next to the time to chunk and embed that document alone; and the same
two through the ``kb reindex`` command (process start and model load included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kb import KnowledgeBase
from kb.evaluation.debian import fetch_debian_package
from kb.loading import load_file

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench" / "reindex"
REPORT = REPO / "evals" / "reports" / "bench-reindex.md"
TOUCHED = "sql-createindex.html"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    root, version = fetch_debian_package("postgresql-doc-15", REPO / ".bench")
    corpus, index = WORK / "corpus", WORK / "index"
    if not args.reuse or not index.exists():
        shutil.rmtree(WORK, ignore_errors=True)
        shutil.copytree(root / "usr/share/doc/postgresql-doc-15/html", corpus)
    lines = [
        "# Reindex benchmark",
        "",
        f"Corpus: postgresql-doc-15 {version} (HTML), copied to {corpus.relative_to(REPO)}. "
        f"Command: `python scripts/bench_reindex.py`. {os.cpu_count()} cores.",
        "",
    ]
    with KnowledgeBase.open(index) as kb:
        kb.use_llm(None)
        if not args.reuse or not kb.manifest.documents:
            tick = time.perf_counter()
            full = kb.reindex(corpus)
            lines.append(
                f"- full index: {len(full.added)} documents, {full.chunks_written} chunks in {time.perf_counter() - tick:.1f} s "
                f"(embed {full.timings['embed']:.1f} s)"
            )
        documents = len(kb.manifest.documents)
        unchanged = []
        for _ in range(5):
            tick = time.perf_counter()
            report = kb.reindex(corpus)
            unchanged.append(time.perf_counter() - tick)
            assert report.chunks_written == 0
        lines.append(
            f"- reindex, nothing changed ({documents} documents): median {statistics.median(unchanged) * 1e3:.0f} ms "
            f"(of 5 runs; target < 1 s for 500)"
        )
        # The touched document alone: parse, chunk and embed it, model already loaded.
        path = corpus / TOUCHED
        original = path.read_text(encoding="utf-8")
        touched_runs, alone_runs = [], []
        for i in range(3):
            path.write_text(
                original.replace("</body>", f"<p>Benchmark edit {i} {time.time()}.</p></body>"), encoding="utf-8"
            )
            tick = time.perf_counter()
            doc = load_file(path, TOUCHED, kb.settings)
            chunks = kb.chunker().chunk(doc.parsed)
            kb.embedder.embed([c.text for c in chunks])
            alone_runs.append(time.perf_counter() - tick)
            tick = time.perf_counter()
            report = kb.reindex(corpus)
            touched_runs.append(time.perf_counter() - tick)
            assert report.changed == [TOUCHED], report.summary()
        alone, touched = statistics.median(alone_runs), statistics.median(touched_runs)
        lines.append(
            f"- reindex after touching one document ({TOUCHED}, {len(chunks)} chunks, {report.chunks_reused} reused): "
            f"median {touched * 1e3:.0f} ms; chunk + embed that document alone {alone * 1e3:.0f} ms; "
            f"target 2 × {alone * 1e3:.0f} + 1000 = {2 * alone * 1e3 + 1000:.0f} ms"
        )
        path.write_text(original, encoding="utf-8")
        kb.reindex(corpus)
    for label, extra in (("nothing changed", []), ("dry run", ["--dry-run"])):
        tick = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "kb.cli", "reindex", str(corpus), "--kb", str(index), *extra],
            check=True,
            capture_output=True,
        )
        lines.append(
            f"- `kb reindex` command, {label} (process start, imports, model identity included): {time.perf_counter() - tick:.1f} s"
        )
    text = "\n".join(lines) + "\n"
    REPORT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
