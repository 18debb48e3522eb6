"""Real corpora through `datasets.load_dataset`: local files (data=local) and hub datasets (data=hub).

Both go through one function, `load_corpus`: local is a builder name (text, csv, json, parquet) plus
the files its globs match, hub is a dataset name plus its config. Every bad input stops here, before
any processing, with a DataError that names the file, the column or the value.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from datasets import load_dataset

from lmforge.config import CorpusConfig, DataConfig
from lmforge.data import RawCorpora
from lmforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# user-facing builder names -> (datasets builder, extra builder arguments)
LOCAL_BUILDERS = {"text": ("text", {}), "csv": ("csv", {}), "tsv": ("csv", {"sep": "\t"}),
                  "json": ("json", {}), "jsonl": ("json", {}), "parquet": ("parquet", {})}


def load_real(cfg: DataConfig, seed: int) -> RawCorpora:  # noqa: ARG001 - same signature as synthetic
    """The three corpora of data=local or data=hub. Every source is opened (and checked) here; the general
    and domain corpora are then read lazily, as preprocess streams them. With `domain_from_task` the
    domain corpus is left empty here: preprocess carves it out of the cleaned task reviews."""
    for name in ("general", "task"):
        if getattr(cfg, name) is None:
            raise ConfigError(f"data.{name} must be set for data.source={cfg.source}")
    if (cfg.domain is None) == (cfg.domain_from_task is None):
        raise ConfigError("set exactly one of data.domain (a corpus) and data.domain_from_task "
                          f"(a share of the task reviews), got domain={cfg.domain!r}, "
                          f"domain_from_task={cfg.domain_from_task!r}")
    hub = cfg.source == "hub"
    general = iter_texts(cfg.general, "data.general", hub, cfg.general_docs, cfg.streaming)
    domain: Iterable[str] = []
    if cfg.domain is not None:
        domain = iter_texts(cfg.domain, "data.domain", hub, cfg.domain_docs, cfg.streaming)
    task, labels = load_corpus(cfg.task, "data.task", hub, cfg.task_examples, cfg.streaming,
                               labelled=True)
    return RawCorpora(general=general, domain=domain, task_texts=task, task_labels=labels)


def load_corpus(spec: CorpusConfig, key: str, hub: bool, limit: int | None = None,
                streaming: bool = False, labelled: bool = False) -> tuple[list[str], list[int]]:
    """(texts, labels) of one corpus, in memory; labels are indices into `preprocess.label_words` (empty
    when not `labelled`). `limit` keeps the first documents only (read lazily when `streaming`)."""
    texts: list[str] = []
    labels: list[int] = []
    for text, label in corpus_rows(spec, key, hub, limit, streaming, labelled):
        texts.append(text)
        if label is not None:
            labels.append(label)
    return texts, labels


def iter_texts(spec: CorpusConfig, key: str, hub: bool, limit: int | None = None,
               streaming: bool = False) -> Iterator[str]:
    """The texts of an unlabelled corpus, read lazily (the sources are opened, and checked, right away)."""
    return (text for text, _ in corpus_rows(spec, key, hub, limit, streaming, labelled=False))


def corpus_rows(spec: CorpusConfig, key: str, hub: bool, limit: int | None, streaming: bool,
                labelled: bool) -> Iterator[tuple[str, int | None]]:
    """(text, label or None) of every document. Every source split is opened before this returns, so a
    missing file, an unreadable one or a missing column fails at once; rows are read as they are
    consumed (from memory-mapped Arrow, or from the files themselves when `streaming`)."""
    if labelled and not spec.label_files and (spec.label_column is None or not spec.label_values):
        raise ConfigError(f"{key}: a labelled corpus needs label_files (one glob per label) or "
                          f"label_column and label_values")
    if spec.label_files:
        groups = [(i, [pattern]) for i, pattern in enumerate(spec.label_files)]  # label = file's index
    else:
        groups = [(None, spec.files)]
    opened = [(fixed_label, patterns, [_rows(spec, key, hub, patterns, split, streaming)
                                       for split in (spec.splits if hub else ["train"])])  # local: one split
              for fixed_label, patterns in groups]
    # a limit is shared equally between label files, so that a cap keeps both classes
    share = None if limit is None else -(-limit // len(groups))

    def rows() -> Iterator[tuple[str, int | None]]:
        total = 0
        for fixed_label, patterns, datasets_of_splits in opened:
            got = 0
            for dataset in datasets_of_splits:
                room = None if share is None else share - got
                if room == 0:
                    break
                for row in _take(dataset, spec, key, patterns, fixed_label, labelled, room):
                    got += 1
                    yield row
            total += got
        log.info("%s: %d documents from %s", key, total, spec.path if hub else ", ".join(
            spec.label_files or spec.files))

    return rows()


def resolve_globs(patterns: list[str], key: str) -> list[str]:
    """Every file the globs match, sorted within each glob (a stable document order)."""
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not matched:
            raise DataError(f"{key}: the pattern {pattern!r} matches no file "
                            f"(relative to {Path.cwd()})")
        files += matched
    return files


def _rows(spec: CorpusConfig, key: str, hub: bool, patterns: list[str], split: str, streaming: bool):
    """An iterable of row dicts of one source split, its errors turned into DataErrors."""
    if hub:
        path, kwargs = spec.path, {"name": spec.name}
        files = resolve_globs(patterns, key) if patterns else None
        where = f"hub dataset {spec.path!r}" + (f" ({spec.name})" if spec.name else "")
    else:
        if spec.path not in LOCAL_BUILDERS:
            raise ConfigError(f"{key}.path: unknown local format {spec.path!r} "
                              f"(expected one of {', '.join(LOCAL_BUILDERS)})")
        if not patterns:
            raise ConfigError(f"{key}: data=local needs files (or label_files)")
        path, kwargs = LOCAL_BUILDERS[spec.path][0], dict(LOCAL_BUILDERS[spec.path][1])
        files = resolve_globs(patterns, key)
        where = _names(files)
        if path != "parquet":
            for file in files:
                check_text_file(file, spec.encoding, key)
    if path == "text":
        kwargs |= {"sample_by": spec.sample_by, "encoding": spec.encoding}
    elif path == "csv":
        kwargs |= {"encoding": spec.encoding}
    data_files = {split: files} if files else None
    try:
        ds = load_dataset(path, data_files=data_files, split=split, streaming=streaming, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to read becomes one clear message
        culprit = _first_unreadable(path, files, kwargs) if files and len(files) > 1 else where
        raise DataError(f"{key}: cannot read {culprit} as {spec.path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    columns = list(ds.column_names or [])
    needed = [c for c in (spec.text_column, spec.label_column if not spec.label_files else None) if c]
    for column in needed:
        if columns and column not in columns:
            raise DataError(f"{key}: {where} has no column {column!r} (columns found: "
                            f"{', '.join(columns)}); set {key}.text_column / label_column")
    return ds


def check_text_file(file: str, encoding: str, key: str) -> None:
    """An empty or binary file, named before `datasets` reports it as "An error occurred"."""
    import codecs

    if Path(file).stat().st_size == 0:
        raise DataError(f"{key}: {file} is empty")
    try:
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    except LookupError:
        raise ConfigError(f"{key}.encoding: unknown encoding {encoding!r}") from None
    offset = 0
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            if b"\x00" in chunk:
                raise DataError(f"{key}: {file} is not a text file (a NUL byte at offset {offset + chunk.index(0)})")
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise DataError(f"{key}: {file} is not valid {encoding} text (byte offset {offset + exc.start}); "
                                f"set {key}.encoding if it is text in another encoding") from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"{key}: {file} is not valid {encoding} text (it ends inside a character)") from None


def _names(files: list[str], most: int = 5) -> str:
    """Files for a message: all of a few, the first ones of many."""
    return ", ".join(files) if len(files) <= most else f"{', '.join(files[:most])} and {len(files) - most} more"


def _first_unreadable(path: str, files: list[str], kwargs: dict) -> str:
    """Which of several files fails to load on its own (the error of a multi-file load does not say)."""
    for file in files:
        try:
            load_dataset(path, data_files={"train": [file]}, split="train", **kwargs)
        except Exception:  # noqa: BLE001
            return file
    return _names(files)


def _take(rows, spec: CorpusConfig, key: str, patterns: list[str], fixed_label: int | None,
          labelled: bool, limit: int | None) -> Iterator[tuple[str, int | None]]:
    allowed = {value: i for i, value in enumerate(spec.label_values)}
    for row in islice(rows, limit):
        if spec.text_column not in row or (labelled and fixed_label is None
                                           and spec.label_column not in row):
            raise DataError(f"{key}: {', '.join(patterns) or spec.path} has no column "
                            f"{spec.text_column if spec.text_column not in row else spec.label_column!r}"
                            f" (columns found: {', '.join(row)})")
        text = row[spec.text_column]
        if not isinstance(text, str):  # a missing value in a csv cell: nothing to learn from
            text = "" if text is None else str(text)
        if not labelled:
            yield text, None
        elif fixed_label is not None:
            yield text, fixed_label
        else:
            value = row[spec.label_column]
            if str(value) not in allowed:
                raise DataError(f"{key}: label value {value!r} in column {spec.label_column!r} of "
                                f"{', '.join(patterns) or spec.path} is not one of the label_values "
                                f"{spec.label_values}")
            yield text, allowed[str(value)]
