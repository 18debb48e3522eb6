"""lmforge.quiet: the library lines it names are dropped while its block runs, nothing else, and nothing after it.
That the stages' logs are clean is checked on real runs: test_quantize_stage.py (ONNX export and ORT
quantization) and test_prune_stage.py (calibration and the Trainer)."""

import contextlib
import logging
import warnings
from collections.abc import Iterator

import pytest

from lmforge import quiet

# the loggers the lines below are emitted on (besides the root logger)
LOGGERS = ("torch.onnx._internal.exporter._registration", "transformers.trainer_utils", "transformers.trainer",
           "transformers.modeling_utils", "lmforge.training.runner")


@contextlib.contextmanager
def captured() -> Iterator[tuple[list[str], list[str]]]:
    """The log messages and the warnings emitted in the block."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.name}: {record.getMessage()}")

    handler = Keep()
    loggers = [logging.getLogger(), *map(logging.getLogger, LOGGERS)]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            messages: list[str] = []
            yield records, messages
            messages.extend(str(w.message) for w in caught)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def emit_everything() -> None:
    """Each silenced line as its library prints it, then one line of each source that must stay."""
    logging.getLogger("torch.onnx._internal.exporter._registration").warning(
        "torchvision is not installed. Skipping %s", "torchvision::nms")
    logging.warning("Please consider to run pre-processing before quantization. Refer to example: ...")
    logging.getLogger("transformers.trainer_utils").warning(
        "mtime may not be reliable on this filesystem, falling back to numerical ordering")
    logging.getLogger("transformers.trainer").warning(
        "There were missing keys in the checkpoint model loaded: ['lm_head.weight'].")
    logging.getLogger("transformers.modeling_utils").warning(
        "We strongly recommend passing in an `attention_mask` since your input_ids may be padded.")
    warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
    warnings.warn("# The axis name: batch will not be used, since it shares the same shape constraints "
                  "with another axis: batch.", UserWarning, stacklevel=1)
    # must stay: other lines of the same loggers and categories, and lmforge's own
    logging.getLogger("transformers.trainer").warning(
        "There were missing keys in the checkpoint model loaded: ['transformer.h.0.mlp.c_fc.weight'].")
    logging.warning("an unexpected warning on the root logger")
    logging.getLogger("lmforge.training.runner").warning("pretrain: training loss 41.000 at step 60")
    warnings.warn("some other deprecation", FutureWarning, stacklevel=1)


@pytest.fixture(autouse=True)
def loggers_at_warning(monkeypatch):
    """Each logger at WARNING, enabled, and recorded on itself only (torch and transformers configure their
    loggers' propagation when imported, and earlier tests may have changed levels)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        # no filter either: a library may leave one on its logger; and an empty isEnabledFor cache: setting
        # `level` directly does not clear it, so a level an earlier test set with setLevel (e.g. transformers'
        # set_verbosity_error) stays in force through it (seen twice in CI: the modeling_utils line missing)
        for attribute, value in (("level", logging.WARNING), ("propagate", False), ("disabled", False),
                                 ("filters", []), ("_cache", {})):
            monkeypatch.setattr(logger, attribute, value)
    monkeypatch.setattr(logging.root.manager, "disable", 0)  # and no logging.disable() left by an earlier test
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)
    monkeypatch.setattr(logging.getLogger(), "_cache", {})


def test_third_party_drops_exactly_the_named_library_lines_and_only_inside_its_block():
    with captured() as (records, caught), quiet.third_party():
        emit_everything()
    assert records == [
        "transformers.trainer: There were missing keys in the checkpoint model loaded: "
        "['transformer.h.0.mlp.c_fc.weight'].",
        "root: an unexpected warning on the root logger",
        "lmforge.training.runner: pretrain: training loss 41.000 at step 60",
    ]
    assert caught == ["some other deprecation"]

    with captured() as (records, caught):  # after the block: everything again
        emit_everything()
    assert len(records) == 8 and len(caught) == 3
