"""A bag-of-words baseline for the task: how far word counts alone get, without word order."""

from __future__ import annotations

from collections import Counter

from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression


def bow_accuracy(train_texts: list[str], train_labels: list[int], test_texts: list[str],
                 test_labels: list[int]) -> float:
    """Test accuracy of logistic regression on unigram + bigram counts (scikit-learn defaults
    otherwise: lower-case, words of two or more characters, L2 penalty with C=1)."""
    vectorizer = CountVectorizer(ngram_range=(1, 2))
    classifier = LogisticRegression(max_iter=2000)
    classifier.fit(vectorizer.fit_transform(train_texts), train_labels)
    return float(classifier.score(vectorizer.transform(test_texts), test_labels))


def majority_accuracy(train_labels: list[int], test_labels: list[int]) -> float:
    """Test accuracy of always predicting the most frequent training label."""
    majority = Counter(train_labels).most_common(1)[0][0]
    return sum(y == majority for y in test_labels) / len(test_labels)
