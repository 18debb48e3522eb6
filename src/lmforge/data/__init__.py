"""Data: raw corpora (synthetic, later local files and hub datasets), cleaning, and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RawCorpora:
    """What every data source returns: three corpora of raw (uncleaned) text.

    general: documents for general language modelling; domain: unlabelled in-domain documents;
    task_texts / task_labels: labelled examples (label = index into `preprocess.label_words`).
    """

    general: list[str]
    domain: list[str]
    task_texts: list[str]
    task_labels: list[int]
