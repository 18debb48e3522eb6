"""Issue 19, item 5: a finite but terrible model gets a null perplexity with the non-finite flag, as a NaN
model does, instead of crashing evaluate with OverflowError (math.exp of a mean loss above ~709)."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lmforge.evaluation import metrics
from lmforge.stage import write_metrics


class Terrible(nn.Module):
    """A finite model that puts all its mass on token 0 by a margin of 1e4 nats: every other target costs
    ~1e4 nats, far beyond exp's range."""

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, 8)
        logits[..., 0] = 1e4
        return SimpleNamespace(logits=logits)


BLOCKS = [[1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7]]


@pytest.mark.parametrize("measure", [
    lambda model: metrics.perplexity(model, BLOCKS, 2),
    lambda model: metrics.masked_perplexity(model, BLOCKS, 2, mask_token_id=7, special_ids=[], probability=0.5),
], ids=["perplexity", "masked_perplexity"])
def test_a_finite_terrible_model_gets_a_null_perplexity_with_the_flag(tmp_path, measure):
    value = measure(Terrible())
    assert value == float("inf")
    write_metrics(tmp_path / "evaluate.json", {"models": {"pruned": {"ppl_general": value, "accuracy": 0.5}}})
    written = json.loads((tmp_path / "evaluate.json").read_text())
    assert written["models"]["pruned"]["ppl_general"] is None
    assert written["non_finite"] == ["models.pruned.ppl_general"]
