"""The synthetic corpora, the sentiment rules, cleaning and the bag-of-words baseline."""

from __future__ import annotations

import pytest

from lmforge.config import DataConfig
from lmforge.data.baseline import bow_accuracy, majority_accuracy
from lmforge.data.cleaning import DocumentFilter, clean_text
from lmforge.data.synthetic import generate, sentiment_score


def sentiment_label(text: str) -> int:
    """1 (positive) or 0 (negative); a review whose score is 0 has no label."""
    score = sentiment_score(text)
    if score == 0:
        raise ValueError(f"review has a tied sentiment score and no label: {text!r}")
    return int(score > 0)


def synthetic_config(general_docs: int, domain_docs: int, task_examples: int) -> DataConfig:
    return DataConfig(source="synthetic", raw="src/lmforge/data/synthetic.py", general_docs=general_docs,
                      domain_docs=domain_docs, task_examples=task_examples, general=None, domain=None, task=None,
                      domain_from_task=None, streaming=False)


SMALL = synthetic_config(50, 40, 60)


@pytest.fixture(scope="module")
def default_task_data():
    """Task examples at the default size of conf/data/synthetic.yaml."""
    return generate(synthetic_config(10, 10, 6000), 1234)


def test_generate_is_deterministic_in_the_seed():
    a, b, c = generate(SMALL, 7), generate(SMALL, 7), generate(SMALL, 8)
    assert a == b
    assert a.general != c.general and a.domain != c.domain and a.task_texts != c.task_texts
    assert (len(a.general), len(a.domain), len(a.task_texts), len(a.task_labels)) == (50, 40, 60, 60)


def test_corpus_sizes_are_independent():
    """Growing one corpus leaves the others as they were (one random stream per corpus)."""
    bigger = generate(synthetic_config(50, 80, 60), 7)
    small = generate(SMALL, 7)
    assert bigger.general == small.general and bigger.task_texts == small.task_texts
    assert bigger.domain[:40] == small.domain


def test_general_and_domain_vocabularies_differ():
    corpora = generate(SMALL, 0)
    general = {w for doc in corpora.general for w in doc.split()}
    domain = {w for doc in corpora.domain for w in doc.split()}
    assert {"plot", "acting", "soundtrack", "director", "battery", "good", "bad"}.isdisjoint(general)
    assert len(domain - general) > 30 and len(general - domain) > 100


@pytest.mark.parametrize(("text", "score"), [
    ("the plot was good .", 1),
    ("the plot was not good .", -1),  # negation flips
    ("i never liked the acting .", -1),
    ("the acting was hardly boring .", 1),
    ("the plot was very good .", 2),  # intensifier doubles
    ("the plot was not very good .", -2),
    ("i did not really like the ending .", -2),
    ("the plot was very good , but the acting was bad .", -1),  # the clause after "but" decides
    ("the plot was bad , but the acting was good .", 1),
    ("the plot was bad , but the acting was not bad .", 1),
    ("the plot was very good and the acting was bad .", 1),  # otherwise the weighted sum
    ("the plot was good and the acting was very bad .", -1),
    ("i saw it with my brother . the plot was awful .", -1),  # neutral sentences count for nothing
])
def test_sentiment_rules(text, score):
    assert sentiment_score(text) == score
    assert sentiment_label(text) == int(score > 0)


def test_tied_review_has_no_label():
    with pytest.raises(ValueError, match="tied"):
        sentiment_label("the plot was good and the acting was bad .")


def test_task_labels_follow_the_rules_and_are_balanced(default_task_data):
    texts, labels = default_task_data.task_texts, default_task_data.task_labels
    assert labels == [sentiment_label(t) for t in texts]
    assert 0.45 < sum(labels) / len(labels) < 0.55
    assert sum(" but " in t for t in texts) > 0.15 * len(texts)
    assert sum(" not " in f" {t} " for t in texts) > 0.1 * len(texts)


def test_bag_of_words_is_good_but_not_perfect(default_task_data):
    texts, labels = default_task_data.task_texts, default_task_data.task_labels
    split = int(0.8 * len(texts))
    bow = bow_accuracy(texts[:split], labels[:split], texts[split:], labels[split:])
    majority = majority_accuracy(labels[:split], labels[split:])
    assert majority < 0.6
    assert majority + 0.1 < bow < 0.99


def test_clean_text():
    decomposed = "cafe\u0301"
    assert clean_text(decomposed) == "caf\u00e9"  # NFC
    assert clean_text("good film.<br /><br />the plot") == "good film. the plot"
    assert clean_text("  a\t\tb \n\n c  ") == "a b c"
    assert clean_text("fish &amp; chips <b>now</b>") == "fish & chips now"


def test_document_filter_keeps_first_occurrences_and_counts_each_step():
    docs_filter = DocumentFilter(min_chars=3)
    kept = list(docs_filter(iter(["abc", "b", "abc", "cde ", "b", "abc"])))  # a stream, read once
    assert kept == [(0, "abc"), (3, "cde")]
    assert docs_filter.counts == {"docs_in": 6, "detokenized": 0, "changed_by_cleaning": 1, "duplicates_removed": 3,
                                  "normalized_duplicates_removed": 0, "too_short_removed": 1, "too_long_removed": 0,
                                  "docs_out": 2}
