"""Text cleaning and the document filters; each filter reports how many documents it removed."""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

# bounded, so a stray "<" cannot swallow a whole document; WikiText's "<unk>" is a word, not a tag
_TAG = re.compile(r"<(?!unk>)[^>]{0,200}>")
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


def drop_long(items: Iterable[T], max_chars: int | None, key: Callable[[T], str] = str) -> tuple[list[T], int]:
    """Items whose text is longer than `max_chars` removed (None: no limit): (kept, number removed)."""
    items = list(items)
    if max_chars is None:
        return items, 0
    kept = [item for item in items if len(key(item)) <= max_chars]
    return kept, len(items) - len(kept)


_WORD = re.compile(r"\w+")


def normalized_key(text: str) -> str:
    """What two texts must share to count as normalised duplicates: the same words up to case,
    compatibility forms (NFKC), punctuation and spacing."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


# WikiText's tokenisation undone, after the detokeniser used with GPT-2 / lm-eval-harness
_WIKITEXT_RULES: list[tuple[re.Pattern, Any]] = [(re.compile(p), r) for p, r in [
    (r" @([-,.])@ ", r"\1"),                     # 1 @,@ 000 -> 1,000; well @-@ known -> well-known
    (r" ([.,:;!?%)\]}])", r"\1"),                 # no space before closing punctuation
    (r"([(\[{$]) ", r"\1"),                       # nor after opening brackets
    (r"\" ([^\"]*?) \"", r'"\1"'),                # " quoted " -> "quoted"
    (r" (n't|'s|'re|'ve|'ll|'m|'d)\b", r"\1"),    # do n't -> don't, it 's -> it's
    (r"=(?: =)+", lambda m: m.group(0).replace(" ", "")),  # = = Heading = = -> == Heading ==
]]


def detokenize_wikitext(text: str) -> str:
    for pattern, repl in _WIKITEXT_RULES:
        text = pattern.sub(repl, text)
    return text


DETOKENIZERS: dict[str, Callable[[str], str]] = {"none": lambda text: text, "wikitext": detokenize_wikitext}
