"""Text cleaning and the document filters, one document at a time; each filter counts what it removed."""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# bounded, so a stray "<" cannot swallow a whole document; WikiText's "<unk>" is a word, not a tag
_TAG = re.compile(r"<(?!unk>)[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Unicode NFC, HTML tags (IMDB's `<br />`) and entities replaced, whitespace collapsed, stripped."""
    text = unicodedata.normalize("NFC", text)
    text = html.unescape(_TAG.sub(" ", text))
    return _SPACE.sub(" ", text).strip()


def digest(text: str) -> int:
    """A 128-bit fingerprint of a text: what the duplicate and leakage checks keep in memory instead of
    the text itself, so they scale to corpora that do not fit (a collision is a 2**-64 event)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest(), "big")


def overlap_key(text: str) -> int:
    """What a text shares with its near-copies (same words up to case, punctuation and spacing), as 64 bits:
    the key of the overlap check between external test sets and the training corpora."""
    return digest(normalized_key(text)) & 0xFFFF_FFFF_FFFF_FFFF


class DocumentFilter:
    """Cleans a stream of documents one at a time and counts what each step did.

    detokenise -> clean_text -> drop exact duplicates -> (normalised duplicates) -> drop too short /
    too long. Duplicates are compared by digest and the first occurrence is kept (even when a length
    filter drops it afterwards), so the result does not depend on how the stream is cut.
    """

    def __init__(self, min_chars: int, max_chars: int | None = None, dedupe: str = "exact",
                 detokenize: str = "none") -> None:
        self.min_chars, self.max_chars, self.normalized = min_chars, max_chars, dedupe == "normalized"
        self.detokenize = DETOKENIZERS[detokenize]
        self._seen: set[int] = set()
        self._seen_normalized: set[int] = set()
        self.counts = dict.fromkeys(["docs_in", "detokenized", "changed_by_cleaning", "duplicates_removed",
                                     "normalized_duplicates_removed", "too_short_removed", "too_long_removed",
                                     "docs_out"], 0)

    def __call__(self, docs: Iterable[str]) -> Iterator[tuple[int, str]]:
        """(index in `docs`, cleaned text) of every document kept."""
        counts = self.counts
        for index, doc in enumerate(docs):
            counts["docs_in"] += 1
            detokenized = self.detokenize(doc)
            counts["detokenized"] += detokenized != doc
            text = clean_text(detokenized)
            counts["changed_by_cleaning"] += text != detokenized
            if not _first(self._seen, digest(text)):
                counts["duplicates_removed"] += 1
            elif self.normalized and not _first(self._seen_normalized, digest(normalized_key(text))):
                counts["normalized_duplicates_removed"] += 1
            elif len(text) < self.min_chars:
                counts["too_short_removed"] += 1
            elif self.max_chars is not None and len(text) > self.max_chars:
                counts["too_long_removed"] += 1
            else:
                counts["docs_out"] += 1
                yield index, text


def _first(seen: set[int], key: int) -> bool:
    """True the first time `key` is offered."""
    if key in seen:
        return False
    seen.add(key)
    return True


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
