"""The groundedness check (kb.grounding): a sentence is supported when its facts (numbers, flags, keys) are in a
source it cites and most of its words are; list items and trailing markers are split as a reader reads them."""

from __future__ import annotations

import pytest

from kb.grounding import Numbered, sentences, support, ungrounded, unsupported

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
