"""Data: raw corpora (synthetic, later local files and hub datasets), cleaning, and preprocessing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class RawCorpora:
    """What every data source returns: three corpora of raw (uncleaned) text.

    general: documents for general language modelling; domain: unlabelled in-domain documents (both
    may be lazy iterables, read once, as preprocess streams them); task_texts / task_labels: labelled
    examples (label = index into `preprocess.label_words`), in memory.
    """

    general: Iterable[str]
    domain: Iterable[str]
    task_texts: list[str]
    task_labels: list[int]
