"""The groundedness check (kb.grounding): a sentence is supported when its facts (numbers, flags, keys) are in a
source it cites and most of its words are; list items and trailing markers are split as a reader reads them."""

from __future__ import annotations

import pytest

from kb.grounding import Numbered, drop_limits, sentences, support, ungrounded, unsupported
from kb.prompting import echoes_example

SOURCES = [
    Numbered(1, "E4012 means the card issuer declined a retry attempt. Keep `billing.retry_limit` at 4 or below."),
    Numbered(2, "Run `lumen deploy freeze billing-svc` to stop deploys until the owning team has a reviewed fix."),
]


def test_sentences_keep_their_markers_and_split_list_items() -> None:
    text = "To stop deploys: [2]\n1. Freeze the service. [2]\n2. Keep billing.retry_limit at 4 [1].  Done."
    assert sentences(text) == [
        ("To stop deploys:", (2,)),
        ("Freeze the service.", (2,)),
        ("Keep billing.retry_limit at 4.", (1,)),
        ("Done.", ()),
    ]


@pytest.mark.parametrize(
    "text,ok",
    [
        ("E4012 means the card issuer declined the retry attempt [1].", True),
        ("Keep billing.retry_limit at 4 or below [1].", True),
        ("Keep billing.retry_limit at 7 or below [1].", False),  # a wrong number is not supported
        ("Keep billing.retry_limit at 4 or below [2].", False),  # right fact, cites a source that does not say it
        ("Use lumen deploy --force to skip the review [2].", False),  # a flag no source has
        ("Customers should contact their bank about regional outages [1].", False),  # words of no source
        ("Follow these steps: [2]", True),  # makes no claim
        ("The sources do not say how to export the logs.", True),  # a limit of the answer, not a claim
        ("Stop deploys with lumen deploy freeze billing-svc [1][2].", True),  # the union of what it cites
    ],
)
def test_support(text: str, ok: bool) -> None:
    assert (unsupported(text, SOURCES) == []) is ok, support(text, SOURCES)


def test_an_uncited_sentence_is_checked_against_every_source() -> None:
    assert unsupported("The owning team must review the fix before deploys resume.", SOURCES) == []
    assert unsupported("The owning team pays a fine of 300 euros.", SOURCES) != []


def test_a_sentence_keeps_the_spaces_of_its_rst_roles_and_is_checked_as_written() -> None:
    # From a python-faq answer: the sentence repeats its source word for word, but the old split glued
    # "Xt's" to ":c:func:" and counted "s:c:func" as a fact no source has.
    source = Numbered(
        2,
        "Tk has the equivalent of Xt's :c:func:`XtAddInput` call, which allows you to register a callback "
        "function which will be called from the Tk mainloop when I/O is possible on a file descriptor. "
        "See :ref:`tkinter-file-handlers`.",
    )
    answer = (
        "Tk has the equivalent of Xt's :c:func:`XtAddInput()` call, which allows you to register a callback "
        "function which will be called from the Tk mainloop when I/O is possible on a file descriptor. [2] "
        "See :ref:`tkinter-file-handlers`. [2]"
    )
    assert [s for s, _ in sentences(answer)][1] == "See :ref:`tkinter-file-handlers`."
    assert unsupported(answer, [source]) == []
    assert unsupported(answer.replace("XtAddInput", "XtAddOutput"), [source]) != []  # a wrong name still fails


MONITORING = Numbered(1, "## Logs\n\nLogs are JSON lines shipped to Loki and kept for 14 days.")
RETENTION = Numbered(2, "| Data | Kept for |\n|---|---|\n| API request logs | 14 days |\n| Support tickets | 3 years |")
RETRIES = Numbered(3, "By default a failed charge is retried 4 times: after 1 day, 3 days, 5 days and 7 days.")


@pytest.mark.parametrize(
    "answer",
    [
        # The sample set's s11: right, but [1] is the monitoring page, which never says "API"; [2] does.
        "API request logs are kept for 14 days [1].",
        "By default a failed charge is retried 4 times: after 1 day, 3 days, 5 days and 7 days [2].",  # wrong marker
        "A failed charge is retried four times, after one, three, five and seven days [3].",  # a paraphrase
        "Logs are kept for 14 days [1]. Loki deletes them with a KEDA job [1].",  # one claim backed is enough
    ],
)
def test_an_answer_some_source_backs_is_not_withheld(answer: str) -> None:
    assert not ungrounded(support(answer, [MONITORING, RETENTION, RETRIES]), [MONITORING, RETENTION, RETRIES])


@pytest.mark.parametrize(
    "answer",
    [
        "Install KEDA on your Kubernetes cluster [1]. Configure the KEDA deployment to scale on CPU usage [2].",
        "SIEM request logs are kept for 14 days [2].",  # a product no source names, in the sources' own words
        "Yes. Register SAML SSO in the dashboard or with the CLI [1].",
        "Support tickets are kept for 10 years [2].",  # a number no source has
    ],
)
def test_an_answer_no_source_backs_is_withheld(answer: str) -> None:
    sources = [MONITORING, RETENTION, RETRIES]
    assert ungrounded(support(answer, sources), sources)


def test_an_answer_without_claims_is_not_withheld() -> None:
    assert not ungrounded(support("Yes [1].", [MONITORING]), [MONITORING])


def _has_export(sentence: str) -> bool:
    return "export" in sentence


LIMIT = "The sources do not cover how to export it."


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        # A marker run that opens the dropped sentence cites the one before it: it stays.
        ("Use `random.random()` [1]. [1] " + LIMIT, "Use `random.random()` [1]. [1]"),
        ("A is b [1].\n[2] " + LIMIT + "\nC is d [2].", "A is b [1]. [2]\nC is d [2]."),
        # A list item that held only the sentence goes with its number; the rest of an item's line keeps it.
        ("Steps:\n1. Do x [1].\n2. " + LIMIT + "\n3. Do z [1].", "Steps:\n1. Do x [1].\n3. Do z [1]."),
        ("Steps:\n1. " + LIMIT + " Do x [1].\n2. Do z [1].", "Steps:\n1. Do x [1].\n2. Do z [1]."),
        ("Steps:\n+ Do x [1].\n+ " + LIMIT + "\n+ Do z [1].", "Steps:\n+ Do x [1].\n+ Do z [1]."),
        ("A [1].\n\n" + LIMIT + "\n\nB [1].", "A [1].\n\nB [1]."),
        ("A [1].\r\n\r\n" + LIMIT + "\r\n\r\nB [1].", "A [1].\r\n\r\nB [1]."),
        ("Run `export X=1` [1]. " + LIMIT + "\nNext [1].", "Run `export X=1` [1].\nNext [1]."),
        # A sentence ends at a closing bracket or quote, not at "e.g." inside it: the claims around it stay.
        ("A is b [1]. (" + LIMIT + ") C is d [1].", "A is b [1]. C is d [1]."),
        ("A is b [1]. The sources do not say how to export it, e.g. as CSV.", "A is b [1]."),
        ("Line one [1].  \nLine two [1]. " + LIMIT, "Line one [1].  \nLine two [1]."),  # a hard break stays
        ("A is b [1]. The sources do not say how to export it to S3, e.g. S3 or GCS buckets.", "A is b [1]."),
        # Markers after a code block go on the line after its fence (CommonMark closes it only on its own line).
        (
            "Run:\n```\nkb backup\n```\n[1] " + LIMIT + "\nCheck it [1].",
            "Run:\n```\nkb backup\n```\n[1]\nCheck it [1].",
        ),
        # Not dropped: code, a claim, a limit a marker cites, a claim with a limit clause, a claim on "source".
        ("A is b [1]. The sources do not say how to export it (e.g. CSV [1]).", None),
        ("```\n" + LIMIT + "\n```\nDone [1].", None),
        ("Use the export command [1]. Logs export nightly [2].", None),
        ("A is b [1]. The sources do not say how to export X [1]. C is d [2].", None),
        ("A is b [1]. " + LIMIT + " [2] C is d [2].", None),
        ("Logs are kept 30 days [1], but the sources do not say how to export them.", None),
        ("No, the open-source product does not include export; it is in Enterprise only [1].", None),
    ],
)
def test_drop_limits_removes_only_whole_uncited_limit_sentences(text: str, kept: str | None) -> None:
    result, removed = drop_limits(text, _has_export)
    assert result == (text if kept is None else kept)
    assert len(removed) == (kept is not None)


# The 1.5B model's copies of the prompt's partial-answer example, from python-faq's tune and test splits.
@pytest.mark.parametrize(
    ("sentence", "question", "source", "echo"),
    [
        (
            "The sources do not cover how to export these random numbers.",
            "How do I generate random numbers in Python?",
            "This module implements pseudo-random number generators for various distributions.",
            True,
        ),
        (
            "The sources do not cover how to export these logs.",
            "How do I debug an extension?",
            "When Python is built with debug options, extra checks of the interpreter are enabled.",
            True,
        ),
        # The question's or a source's own word is the user's subject, not the example's.
        ("The sources do not say how to export the keys.", "Can I export my API keys?", "Keys rotate.", False),
        ("The sources do not say how to export the keys.", "Where are keys kept?", "Export keys with x.", False),
        ("The sources do not say how often keys rotate.", "How often do keys rotate?", "Keys rotate.", False),
        # The example's other words are everyday ones: a limit about them is the user's (the first version
        # dropped these caveats, and a partial answer then read as complete).
        ("The sources do not say how to turn it off.", "Can I disable telemetry?", "Telemetry is on.", False),
        ("The sources do not say why other jobs fail.", "Why did my build job fail?", "Jobs run.", False),
        ("The sources do not say what happens after 30 days.", "How long is history kept?", "Kept.", False),
        # Any form of the word counts as the user's: a flag, a name, a call, a compound.
        ("The sources do not say how to export to S3.", "What does the --export flag do?", "Writes.", False),
        ("The sources do not say how to export custom metrics.", "How do I set up node exporter?", "Run.", False),
        ("The sources do not say how to export it.", "How do I back up?", "Call `kb.export()`.", False),
    ],
)
def test_echoes_example_spots_the_prompt_example_copied(sentence, question, source, echo) -> None:
    assert echoes_example(sentence, question, [Numbered(1, source)]) is echo
