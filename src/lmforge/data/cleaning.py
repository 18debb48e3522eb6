"""Text cleaning and the document filters; each filter reports how many documents it removed."""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")

_TAG = re.compile(r"<[^>]{0,200}>")  # bounded, so a stray "<" cannot swallow a whole document
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Unicode NFC, HTML tags (IMDB's `<br />`) and entities replaced, whitespace collapsed, stripped."""
    text = unicodedata.normalize("NFC", text)
    text = html.unescape(_TAG.sub(" ", text))
    return _SPACE.sub(" ", text).strip()


def dedupe(items: Iterable[T], key: Callable[[T], str] = str) -> tuple[list[T], int]:
    """Exact duplicates (by `key`) removed, keeping the first occurrence: (kept, number removed)."""
    seen: set[str] = set()
    kept: list[T] = []
    removed = 0
    for item in items:
        k = key(item)
        if k in seen:
            removed += 1
        else:
            seen.add(k)
            kept.append(item)
    return kept, removed


def drop_short(items: Iterable[T], min_chars: int, key: Callable[[T], str] = str) -> tuple[list[T], int]:
    """Items whose text (by `key`) is shorter than `min_chars` removed: (kept, number removed)."""
    items = list(items)
    kept = [item for item in items if len(key(item)) >= min_chars]
    return kept, len(items) - len(kept)
