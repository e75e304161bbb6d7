"""The ``kb`` command, driven through its real entry point (Typer's runner, same process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kb.cli import app
from tests.conftest import write
from tests.fake_openai import FakeOpenAI, serve

runner = CliRunner()


def test_ingest_search_status_round_trip(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(docs, "errors.md", "---\nproduct: billing\n---\n# Errors\n\n## E4012\n\nE4012 means the issuer declined.\n")
    write(docs, "other.md", "# Other\n\nNothing about errors here, only gardening.\n")
    write(docs, "broken.md", b"\xff\xfe\x00\xd8")
    index = tmp_path / "idx"

    result = runner.invoke(app, ["ingest", str(docs), "--kb", str(index)])
    assert result.exit_code == 0, result.output
    assert "2 added" in result.output and "skipped files" in result.output and "broken.md" in result.output

    result = runner.invoke(app, ["search", "E4012", "--kb", str(index), "--json", "-k", "1"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert hits[0]["doc_id"] == "docs:errors.md" and hits[0]["header_path"] == "Errors > E4012"

    result = runner.invoke(app, ["search", "declined", "--kb", str(index), "--filter", "product=billing"])
    assert result.exit_code == 0 and "errors.md:" in result.output and "other.md" not in result.output

    result = runner.invoke(app, ["status", "--kb", str(index), "--json"])
    status = json.loads(result.output)
    assert (status["documents"], status["chunks"]) == (2, 2)
    shown = runner.invoke(app, ["status", "--kb", str(index)], terminal_width=200)  # names what runs the embedder
    assert shown.exit_code == 0 and f"{status['embedder']['backend']})" in shown.output, shown.output


def test_paths_headings_and_text_in_square_brackets_are_printed_as_they_are(tmp_path: Path, monkeypatch) -> None:
    """Rich read them as style tags: ``docs/[wip].md`` printed as ``docs:.md``, a heading lost ``[deprecated]``,
    and a document could print a clickable terminal link."""
    monkeypatch.setenv("KB_LLM_BACKEND", "extractive")
    docs = tmp_path / "docs"
    body = "The zqbr2 option is gone [note]; see [[install]] and [link=http://evil.example]click[/link] now."
    write(docs, "[wip].md", f"# Options [deprecated]\n\n{body}\n")
    write(docs, "[draft]/x.md", b"\xff\xfe\x00\xd8")
    index = tmp_path / "idx"
    result = runner.invoke(app, ["ingest", str(docs), "--kb", str(index)], terminal_width=300)
    assert result.exit_code == 0 and "'docs:[draft]/x.md'" in result.output, result.output
    result = runner.invoke(app, ["search", "zqbr2", "-k", "1", "--kb", str(index)], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "docs:[wip].md:1-3" in result.output and "Options [deprecated]" in result.output, result.output
    assert body in " ".join(result.output.split()), result.output  # rich wraps the snippet line
    result = runner.invoke(app, ["ask", "What about the zqbr2 option?", "--kb", str(index)], terminal_width=300)
    assert result.exit_code == 0 and "docs:[wip].md:1-3" in result.output, result.output
    (tmp_path / "more").mkdir()
    result = runner.invoke(app, ["source", "add", "[x]", str(tmp_path / "more"), "--kb", str(index)])
    assert result.exit_code == 2 and "'[x]'" in result.output, result.output  # an error names it as typed


def test_errors_exit_2_with_a_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(tmp_path / "missing"), "--kb", str(tmp_path / "idx")])
    assert result.exit_code == 2 and "not a folder" in result.output
    result = runner.invoke(app, ["search", "x", "--kb", str(tmp_path / "idx"), "--filter", "nonsense"])
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "kb.toml").write_text("chunk_max_tokens = -5\n")
    result = runner.invoke(app, ["status", "--kb", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "chunk_max_tokens" in result.output


def test_kb_variables_take_comma_lists_and_bad_json_is_an_error_naming_the_variable(tmp_path: Path) -> None:
    """``KB_INCLUDE='*.md,*.rst'`` (the form the settings promise) and a malformed ``KB_API_KEYS`` crashed every
    command with a 150-line traceback, exit 1."""
    docs = tmp_path / "docs"
    write(docs, "a.md", "# A\n\nMarkdown zqcomma.\n")
    write(docs, "b.rst", "B\n=\n\nText zqcomma.\n")
    write(docs, "c.txt", "Text zqcomma.\n")
    index = str(tmp_path / "idx")
    result = runner.invoke(app, ["ingest", str(docs), "--kb", index, "--json"], env={"KB_INCLUDE": "*.md, *.rst"})
    assert result.exit_code == 0 and json.loads(result.output)["added"] == 2, result.output
    for variable, value, named in (
        ("KB_API_KEYS", '[{"key": "abc"', "KB_API_KEYS"),
        ("KB_INDEXED_FIELDS", '["product"', "indexed_fields: Value error, not a JSON list"),
    ):
        result = runner.invoke(app, ["status", "--kb", index], env={variable: value})
        assert result.exit_code == 2 and named in result.output and "Traceback" not in result.output, result.output
    result = runner.invoke(app, ["status", "--kb", index, "--json"], env={"KB_INDEXED_FIELDS": '["product", "team"]'})
    assert json.loads(result.output)["settings"]["indexed_fields"] == ["product", "team"], result.output


def test_sources_declared_in_kb_toml_are_built_by_reindex_and_reading_first_creates_nothing(tmp_path: Path) -> None:
    """``kb reindex --all`` said "no index" for an index whose sources only kb.toml declares, and that failed run
    (and every reading command) left a LOCK file and an empty shard behind."""
    write(tmp_path / "docs", "a.md", "# A\n\nThe zqdeclared page.\n")
    index = tmp_path / "idx"
    write(index, "kb.toml", '[[sources]]\nname = "mydocs"\npath = "../docs"\n')
    for command in (["status"], ["search", "zqdeclared"], ["reindex", "undeclared"]):
        result = runner.invoke(app, [*command, "--kb", str(index)])
        assert result.exit_code == 2 and "no index at" in result.output, (command, result.output)
        assert sorted(p.name for p in index.iterdir()) == ["kb.toml"], command
    for command in (["reindex", "--all"], ["reindex", "mydocs"]):
        result = runner.invoke(app, [*command, "--kb", str(index), "--json"])
        assert result.exit_code == 0, (command, result.output)
    result = runner.invoke(app, ["search", "zqdeclared", "--kb", str(index), "--json"])
    assert json.loads(result.output)[0]["doc_id"] == "mydocs:a.md", result.output


def test_ask_prints_the_answer_with_sources_and_json(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KB_LLM_BACKEND", "extractive")
    docs = tmp_path / "docs"
    write(
        docs, "retries.md", "# Retries\n\n## Error E4012\n\nE4012 means the card issuer declined the retry attempt.\n"
    )
    index = tmp_path / "idx"
    assert runner.invoke(app, ["ingest", str(docs), "--kb", str(index)]).exit_code == 0

    result = runner.invoke(app, ["ask", "What does error E4012 mean?", "--kb", str(index)])
    assert result.exit_code == 0, result.output
    assert "E4012 means the card issuer declined the retry attempt. [1]" in result.output
    assert "[1] docs:retries.md:1-5  Retries > Error E4012" in result.output  # the bare top heading leads in

    result = runner.invoke(app, ["ask", "What does error E4012 mean?", "--kb", str(index), "--json"])
    answer = json.loads(result.stdout)
    assert answer["citations"][0]["doc_id"] == "docs:retries.md" and answer["refused"] is False

    result = runner.invoke(app, ["ask", "How do I bake sourdough bread?", "--kb", str(index)])
    assert result.exit_code == 0 and "I don't know" in result.output and "no_relevant_sources" in result.output


def test_ask_says_a_streamed_answer_no_source_supports_was_withdrawn(tmp_path: Path, monkeypatch) -> None:
    # An OpenAI-compatible endpoint (tests/fake_openai.py: none can run here) that answers from "memory".
    docs = tmp_path / "docs"
    write(docs, "scaling.md", "# Scaling\n\n## Workers\n\nScale the billing workers to 24 replicas during a backlog.\n")
    index = tmp_path / "idx"
    assert runner.invoke(app, ["ingest", str(docs), "--kb", str(index)]).exit_code == 0
    invented = "Install KEDA on your Kubernetes cluster [1]. Create a KEDA ScaledObject for the workers [1]."
    with serve(FakeOpenAI(lambda body: invented)) as url:
        monkeypatch.setenv("KB_LLM_BACKEND", "openai")
        monkeypatch.setenv("KB_LLM_BASE_URL", url)
        monkeypatch.setenv("KB_LLM_MODEL", "fake-model")
        monkeypatch.setenv("KB_REFUSAL_FLOOR", "0")  # let the question reach the generator
        result = runner.invoke(app, ["ask", "How do I autoscale the billing workers with KEDA?", "--kb", str(index)])
    assert result.exit_code == 0, result.output
    streamed, _, after = result.output.partition("── withdrawn, no source supports the text above:")
    assert "Install KEDA" in streamed and "I don't know" in after  # what was shown, then that it is taken back
    assert "refused (unsupported)" in after


def test_ask_chat_reads_follow_ups_and_retrieves_with_the_conversation(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KB_LLM_BACKEND", "extractive")
    docs = tmp_path / "docs"
    write(docs, "retries.md", "# Retries\n\n## Error E4012\n\nE4012 means the card issuer declined the retry.\n\n"
          "## Fixing E4012\n\nLower retry pressure with exponential backoff to fix E4012.\n")  # fmt: skip
    write(docs, "garden.md", "# Garden\n\nWater the tomatoes and fix the fence in spring.\n")
    index = tmp_path / "idx"
    assert runner.invoke(app, ["ingest", str(docs), "--kb", str(index)]).exit_code == 0
    result = runner.invoke(
        app, ["ask", "What does error E4012 mean?", "--kb", str(index), "--chat", "--json"], input="How do I fix it?\n\n"
    )
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines() if line.strip())
    assert first["question"] == "What does error E4012 mean?"
    assert "E4012" in second["question"] and second["citations"][0]["doc_id"] == "docs:retries.md"
    assert "backoff" in second["text"]


def test_reindex_dry_run_then_apply(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(docs, "a.md", "# A\n\nFirst document about alpha retries.\n")
    write(docs, "b.md", "# B\n\nSecond document about beta alerts.\n")
    index = str(tmp_path / "idx")
    assert runner.invoke(app, ["reindex", str(docs), "--kb", index]).exit_code == 0
    (docs / "b.md").unlink()
    write(docs, "c.md", "# C\n\nThird document about gamma backups.\n")
    result = runner.invoke(app, ["reindex", str(docs), "--kb", index, "--dry-run"])
    assert result.exit_code == 0 and "plan: 1 added, 0 changed, 1 deleted, 1 unchanged" in result.output
    assert "add    docs:c.md" in result.output and "delete docs:b.md" in result.output
    result = runner.invoke(app, ["reindex", str(docs), "--kb", index, "--json"])
    report = json.loads(result.stdout)
    assert (report["added_ids"], report["deleted_ids"]) == (["docs:c.md"], ["docs:b.md"])


def test_eval_of_a_set_that_names_no_corpus_says_to_pass_one(tmp_path: Path) -> None:
    # It said "corpus folder None not found".
    repo = Path(__file__).resolve().parent.parent
    questions = tmp_path / "mine.jsonl"
    questions.write_text((repo / "evals/sets/sample.jsonl").read_text())
    result = runner.invoke(app, ["eval", str(questions), "--kb", str(tmp_path / "idx")])
    assert result.exit_code != 0 and not (tmp_path / "idx").exists()
    assert "names no corpus" in result.output and "--corpus" in result.output and "None" not in result.output


def test_eval_runs_kb_and_the_baseline_and_writes_a_report(tmp_path: Path, monkeypatch) -> None:
    """kb eval end to end on the sample set: both systems, every stage, the report folder, and --compare."""
    monkeypatch.setenv("KB_LLM_BACKEND", "extractive")
    repo = Path(__file__).resolve().parent.parent
    report = tmp_path / "report"
    args = [
        "eval",
        str(repo / "evals/sets/sample.jsonl"),
        "--kb",
        str(tmp_path / "idx"),
        "--corpus",
        str(repo / "kb/sample_kb"),
    ]
    result = runner.invoke(app, [*args, "--split", "all", "--report", str(report), "--answers", "5"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in report.iterdir()} == {
        "report.md",
        "results.jsonl",
        "summary.json",
        "recall_at_k.png",
        "latency.png",
    }
    text = (report / "report.md").read_text()
    assert "| fused | ndcg@10 |" in text and "kb ÷ baseline" in text and "citation_precision" in text
    assert f"--corpus {repo / 'kb/sample_kb'}" in text  # the recorded command runs again as written
    assert "95% interval" in text and "| kb/fused | kb/dense | ndcg@10 |" in text
    rows = [json.loads(line) for line in (report / "results.jsonl").read_text().splitlines()]
    assert {r["system"] for r in rows} == {"kb", "llamaindex", "llamaindex-256"} and len(rows) == 3 * 26
    assert set(rows[0]["stages"]) == {"bm25", "dense", "fused"}
    compared = runner.invoke(app, ["eval", "--compare", str(report), str(report)])
    assert compared.exit_code == 0 and "0 better, 0 worse" in compared.output


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_kb_search_on_an_embedded_index_loads_neither_torch_nor_llamaindex_nor_qdrant_client(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cold start is import time: the query path of the default index must not pull in torch (seconds),
    LlamaIndex (a second: kb's LlamaIndex faces load on demand) nor qdrant-client (only the server backend)."""
    import subprocess
    import sys

    monkeypatch.setenv("KB_EMBEDDER_BACKEND", backend)
    docs = tmp_path / "docs"
    write(docs, "a.md", "# Failover\n\nRun zqfailover promote on the replica.\n")
    assert CliRunner().invoke(app, ["ingest", str(docs), "--kb", str(tmp_path / "idx")]).exit_code == 0
    probe = (
        "import sys\n"
        "from kb.cli import app\n"
        "from typer.testing import CliRunner\n"
        f"result = CliRunner().invoke(app, ['search', 'zqfailover', '--kb', {str(tmp_path / 'idx')!r}, '--json'])\n"
        "assert result.exit_code == 0 and 'zqfailover' in result.stdout, result.stdout\n"
        "heavy = {'torch', 'sentence_transformers', 'qdrant_client', 'llama_index'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={
        **__import__("os").environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.strip().splitlines()[-1] == "[]"


def test_serve_on_a_port_in_use_or_out_of_range_and_tune_status_without_an_index_are_exit_2(tmp_path: Path) -> None:
    """A taken port exited 3 (kb's code for the mass-delete guard), --port 99999 was a traceback, and
    ``kb tune --status`` on a missing index exited 0."""
    import socket

    index = tmp_path / "idx"
    write(tmp_path / "docs", "a.md", "# A\n\nText.\n")
    assert runner.invoke(app, ["ingest", str(tmp_path / "docs"), "--kb", str(index)]).exit_code == 0
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--kb", str(index), "--allow-anonymous", "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output, result.output
    result = runner.invoke(app, ["serve", "--kb", str(index), "--allow-anonymous", "--port", "99999"])
    assert result.exit_code == 2 and "--port" in result.output and "Traceback" not in result.output, result.output
    result = runner.invoke(app, ["tune", "--status", "--kb", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no index at" in result.output, result.output


def test_files_no_include_pattern_picks_are_counted_and_a_folder_of_only_those_is_a_warning(tmp_path: Path) -> None:
    """``kb ingest`` of a folder of screenshots said "0 added, skipped files 0" and nothing else."""
    shots = tmp_path / "shots"
    for name in ("a.png", "b.PNG", "notes"):
        write(shots, name, b"\x89PNG")
    write(shots, ".hidden.md", "# Hidden\n\nExcluded on purpose.\n")
    result = runner.invoke(app, ["ingest", str(shots), "--kb", str(tmp_path / "idx")], terminal_width=200)
    assert result.exit_code == 0 and "ignored files    3 (.png 2, (no extension) 1)" in result.output, result.output
    assert "no documents: none of the 3 files matched an include pattern" in " ".join(result.output.split())
    write(shots, "page.md", "# Page\n\nText.\n")
    result = runner.invoke(app, ["ingest", str(shots), "--kb", str(tmp_path / "idx"), "--json"])
    report = json.loads(result.output)
    assert report["added"] == 1 and report["ignored"] == {".png": 2, "(no extension)": 1}, report
