"""Speed and scale in one table: every figure of issue 16's goals, read from the report that measured it.

    python scripts/bench_summary.py     # writes evals/reports/bench-summary.md

It measures nothing itself. Each row names the report it comes from and that report's command, so a figure is
re-measured by running that command and then this script again. A report whose format no longer matches stops
the script with the report's name and the line it looked for, rather than leaving a stale figure in the table.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kb.settings import DEFAULT_EMBEDDER_BACKEND

REPORTS = Path(__file__).resolve().parent.parent / "evals" / "reports"
SUMMARY = REPORTS / "bench-summary.md"


@dataclass(frozen=True)
class Row:
    figure: str
    before: str  # what issue 16 measured when it was filed
    goal: str
    measured: str
    met: bool
    report: str
    command: str = ""  # the report's first command when empty


def read(report: str) -> str:
    return (REPORTS / report).read_text(encoding="utf-8")


def json_block(report: str) -> RawData:
    """The report's raw data: its last fenced json block."""
    blocks = re.findall(r"```json\n(.*?)\n```", read(report), re.S)
    if not blocks:
        raise SystemExit(f"{REPORTS / report}: no ```json block of raw data; re-run the benchmark that writes it")
    return RawData(json.loads(blocks[-1]), report)


def captured(report: str, pattern: str) -> tuple[str, ...]:
    """What ``pattern``'s groups capture in ``report``, or a message naming the report and the pattern."""
    found = re.search(pattern, read(report), re.S)
    if found is None:
        raise SystemExit(f"{REPORTS / report}: no line matches {pattern!r}; the report's format changed")
    return found.groups()


def numbers(report: str, pattern: str) -> tuple[float, ...]:
    """The numbers ``pattern``'s groups capture in ``report`` (thousands separators allowed)."""
    return tuple(float(g.replace(",", "")) for g in captured(report, pattern))


def backend(report: str) -> str:
    """The embedder backend a report names."""
    return captured(report, r"[Ee]mbedder backend:? ([\w-]+)")[0]


class RawData(dict):
    """A report's raw data: a missing key stops the script with the report's name, not a bare KeyError."""

    def __init__(self, data: dict, report: str) -> None:
        super().__init__({k: RawData(v, report) if isinstance(v, dict) else v for k, v in data.items()})
        self.report = report

    def __missing__(self, key: str) -> Any:
        raise SystemExit(f"{REPORTS / self.report}: its raw data has no {key!r}; the report's format changed")


def command(row: Row) -> str:
    """The command that measured ``row`` (without its ``--note``, a remark for the report)."""
    found = row.command or (re.findall(r"`(python [^`]+)`", read(row.report)) or ["?"])[0]
    return found.split(" --note ")[0]


def embedder_rows() -> list[Row]:
    backend = DEFAULT_EMBEDDER_BACKEND.value
    e = json_block("bench-embedder.md")[backend]
    src = "bench-embedder.md"
    return [
        Row(
            "ingest rate ÷ raw torch MiniLM encoding, same run",
            "≈ 0.8 (26 chunks/s)",
            "≥ 1.5",
            f"{e['ingest_vs_raw_torch']:.2f} ({e['ingest_chunks_per_s']:.0f} chunks/s, {backend})",
            e["ingest_vs_raw_torch"] >= 1.5,
            src,
        ),
        Row(
            "query embedding p50",
            "10–12 ms",
            "≤ 3 ms",
            f"{e['query_p50_ms']:.1f} ms back to back, {e['idle_query_p50_ms']:.1f} ms after 50 ms idle",
            e["query_p50_ms"] <= 3,
            src,
        ),
        Row(
            "`kb search` cold start (process start → hits printed)",
            "6–13 s",
            "≤ 1.5 s",
            f"{e['cold_search_s']:.2f} s, imports of torch/sentence-transformers: {e['imports']}",
            e["cold_search_s"] <= 1.5,
            src,
        ),
    ]


def scale_rows() -> list[Row]:
    f = json_block("bench-scale.md")
    q, ingest = f["queries"], f["ingest"]
    embed, hybrid = q["embed_ms"], q["hybrid all"]
    measured_by = f["commands"]["queries"]
    p50, p95 = hybrid["p50"] / embed["p50"], hybrid["p95"] / embed["p95"]
    return [
        Row(
            f"hybrid query p50 / p95 at {q['chunks']:,} chunks ÷ query embedding",
            "not measured",
            "≤ 1.3× / ≤ 2×",
            f"{p50:.2f}× / {p95:.2f}× ({hybrid['p50']:.1f} / {hybrid['p95']:.1f} ms against "
            f"{embed['p50']:.1f} / {embed['p95']:.1f} ms, {ingest['embedder']})",
            p50 <= 1.3 and p95 <= 2,
            "bench-scale.md",
            measured_by,
        ),
        Row(
            f"reindex at {q['documents']:,} documents, 1 changed / nothing changed",
            "0.47 s / 0.21 s at 1,167 docs",
            "≤ 1 s / ≤ 0.5 s at 10k docs",
            f"{q['reindex_one_s']:.2f} s / {q['reindex_nothing_s']:.2f} s",
            q["reindex_one_s"] <= 1 and q["reindex_nothing_s"] <= 0.5,
            "bench-scale.md",
            measured_by,
        ),
    ]


def reindex_row() -> Row:
    src = "bench-reindex.md"
    docs, nothing, one = numbers(
        src,
        r"At 10k documents \(([\d,]+) documents.*?nothing changed: median (\d+) ms.*?one document changed.*?median (\d+) ms",
    )
    return Row(
        f"reindex at {docs:,.0f} documents (3 sources), 1 changed / nothing changed",
        "0.47 s / 0.21 s at 1,167 docs",
        "≤ 1 s / ≤ 0.5 s at 10k docs",
        f"{one / 1e3:.2f} s / {nothing / 1e3:.2f} s",
        one <= 1000 and nothing <= 500,
        src,
    )


def soak_rows() -> list[Row]:
    text = read("soak.md")
    rounds = re.findall(r"^\| \d+ \|", text, re.M)
    anon = [float(a) for a in re.findall(r"^\| \d+ \|.*\| \d+ \((\d+) / \d+\) \|", text, re.M)]
    if "| RSS MB (anon / file) |" not in text or len(anon) != len(rounds) or len(anon) < 10:
        raise SystemExit(f"{REPORTS / 'soak.md'}: not a table of 10 or more rounds with an 'RSS MB (anon / file)' column")
    warm = anon[5]  # the index's caches fill during the first rounds
    http_rss, http_rss_end, http_anon, http_anon_end = numbers(
        "soak-http.md", r"After warm-up \(\d+ requests\) → end: RSS (\d+) → (\d+) MB, anon (\d+) → (\d+) MB"
    )
    requests = numbers("soak-http.md", r"--requests (\d+)")[0]
    return [
        Row(
            f"RSS over a {len(anon) - 1}-round reindex soak",
            "1.2 → 1.5 GB over 12 rounds, unexplained",
            "flat after warm-up",
            f"anonymous memory {warm:.0f} MB after round 5 → {anon[-1]:.0f} MB after round {len(anon) - 1} "
            f"({anon[-1] - warm:+.0f} MB; file-backed pages of the store's files come and go; {backend('soak.md')})",
            anon[-1] - warm <= 0.02 * warm,
            "soak.md",
        ),
        Row(
            f"RSS over {requests:,.0f} HTTP requests",
            "0.8 → 1.7 GB over ~1,500 requests",
            "flat after warm-up",
            f"RSS {http_rss:.0f} → {http_rss_end:.0f} MB, anonymous {http_anon:.0f} → {http_anon_end:.0f} MB "
            f"after warm-up ({backend('soak-http.md')})",
            http_anon_end - http_anon <= 0.02 * http_anon,
            "soak-http.md",
        ),
    ]


SECTIONS: tuple[Callable[[], list[Row]], ...] = (embedder_rows, scale_rows, lambda: [reindex_row()], soak_rows)


def render(rows: list[Row]) -> str:
    lines = [
        "# Speed and scale: issue 16's goals, measured",
        "",
        "Command: `python scripts/bench_summary.py`. It measures nothing; each row is read from the report named "
        "in it, which gives its own command and conditions (2 cores, CPU only, the machine to itself).",
        "",
        "| figure | when issue 16 was filed | goal | measured | met | report (command) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r.figure} | {r.before} | {r.goal} | {r.measured} | {'yes' if r.met else '**no**'} | "
            f"[{r.report}]({r.report}) (`{command(r)}`) |"
            for r in rows
        ],
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    rows = [row for section in SECTIONS for row in section()]
    SUMMARY.write_text(render(rows), encoding="utf-8")
    for r in rows:
        print(f"{'met ' if r.met else 'MISS'}  {r.figure}: {r.measured}")
    print(f"written {SUMMARY}")


if __name__ == "__main__":
    main()
