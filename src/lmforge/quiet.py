"""Third-party warnings that say nothing to a user of lmforge, silenced where lmforge calls the library.

A stage's log is for its user: what was read, trained, measured and written. The libraries it calls also print
notes meant for *their* users (the developers of lmforge): which optional packages they skip, which of their
APIs are deprecated, how they could be called differently. Printed on every run, a dozen of them buried the
stage's own lines. Each one is named below with the library line that prints it and why it tells a user of
lmforge nothing; `third_party()` silences exactly those, and only while the call that prints them runs:

    with quiet.third_party():
        torch.onnx.export(...)

Nothing is silenced globally or by level: any other warning of these libraries still reaches the log, and
lmforge's own loggers are never touched. Core layer: imports nothing from lmforge.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

# (logger name, start of the message) of log records
LOG_RECORDS: tuple[tuple[str, str], ...] = (
    # torch/onnx/_internal/exporter/_registration.py: the dynamo exporter looks up torchvision's detection ops
    # (nms, roi_align, roi_pool, deform_conv2d) on every export, four lines per export. No model of lmforge
    # uses them, and torchvision is not a dependency.
    ("torch.onnx._internal.exporter._registration", "torchvision is not installed"),
    # onnxruntime/quantization/quantize.py (quantize_dynamic, quantize_static), on the root logger: advice to
    # run ORT's shape-inference pre-processing, written for image models. lmforge exports with the exporter's
    # optimizer on and measures what quantization covered (quantize.json `coverage`, checked against
    # quantize.min_coverage), so a user has nothing to act on.
    ("root", "Please consider to run pre-processing before quantization"),
    # transformers/trainer_utils.py sort_checkpoints: a short run writes its checkpoints less than a second
    # apart, so the Trainer orders them by step number instead of mtime, which is the right order anyway.
    ("transformers.trainer_utils", "mtime may not be reliable on this filesystem"),
    # transformers/trainer.py _issue_warnings_after_load, on resuming from a checkpoint: the checkpoint's
    # safetensors omit the LM head because it is tied to the token embedding (it is the same tensor), so the
    # head is "missing" and comes back with the embedding. Only that exact key list is silenced.
    ("transformers.trainer", "There were missing keys in the checkpoint model loaded: ['lm_head.weight']"),
    # transformers/modeling_utils.py warn_if_padding_and_no_attention_mask: calibration feeds packed blocks of
    # the corpus, never padded; the warning fires because the end-of-text token between documents has the pad
    # token's id. Its own text says to ignore it in that case.
    ("transformers.modeling_utils", "We strongly recommend passing in an `attention_mask`"),
)

# (category, regular expression matching the start of the message) of `warnings.warn` calls
WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # torch/utils/_pytree.py, raised inside torch.export (run by torch.onnx.export(dynamo=True)) when torch
    # itself unpickles a LeafSpec: a deprecation inside torch, not in lmforge's code.
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # torch/onnx/_internal/exporter/_dynamic_shapes.py: input_ids and attention_mask share the dimensions
    # `batch` and `seq`, so the second input's names are (correctly) the first one's.
    (UserWarning, r"# The axis name: \w+ will not be used, since it shares the same shape constraints"),
)


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message starts with one of `starts`."""

    def __init__(self, starts: list[str]) -> None:
        super().__init__()
        self.starts = tuple(starts)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


@contextlib.contextmanager
def third_party() -> Iterator[None]:
    """Silence the library lines listed in LOG_RECORDS and WARNINGS while the block runs."""
    by_logger: dict[str, list[str]] = {}
    for name, start in LOG_RECORDS:
        by_logger.setdefault(name, []).append(start)
    # a filter on a logger sees the records created on that very logger (the libraries log on these names)
    filters = {name: _DropMessages(starts) for name, starts in by_logger.items()}
    loggers = {name: logging.getLogger(None if name == "root" else name) for name in filters}
    for name, filter_ in filters.items():
        loggers[name].addFilter(filter_)
    try:
        with warnings.catch_warnings():
            for category, message in WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for name, filter_ in filters.items():
            loggers[name].removeFilter(filter_)

