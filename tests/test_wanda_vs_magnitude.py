"""Wanda against magnitude pruning, before any recovery, on a small GPT-2 trained here in seconds.

Trained transformers carry a few outlier input features: LayerNorm gains tens of times larger than the
rest, with correspondingly small weights reading them (Dettmers et al. 2022; Sun et al. 2023). A model
trained for seconds has none, so the test gives it some without changing its function: a few LayerNorm
gains x 20 and the weight rows that read them / 20. Magnitude pruning then removes exactly the small
weights that carry the outliers; Wanda's score |W_ij| x ||X_j|| does not change under that rescaling.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lmforge.compression import wanda
from lmforge.compression.calibration import calibrate
from lmforge.compression.prune import l1_unstructured

VOCAB, SUCCESSORS = 64, 4


def markov_tokens(n: int, length: int, seed: int) -> torch.Tensor:
    """Sequences of a fixed random Markov chain: each token has 4 possible successors (1/k weights)."""
    successors = torch.randint(0, VOCAB, (VOCAB, SUCCESSORS), generator=torch.Generator().manual_seed(0))
    probs = 1 / torch.arange(1, SUCCESSORS + 1).float()
    generator = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, length, dtype=torch.long)
    x[:, 0] = torch.randint(0, VOCAB, (n,), generator=generator)
    for i in range(1, length):
        choice = torch.multinomial(probs / probs.sum(), n, replacement=True, generator=generator)
        x[:, i] = successors[x[:, i - 1], choice]
    return x


def perplexity(model: GPT2LMHeadModel, x: torch.Tensor) -> float:
    with torch.no_grad():
        return math.exp(model(input_ids=x, labels=x).loss.item())


@pytest.fixture(scope="module")
def trained() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                                       bos_token_id=0, eos_token_id=0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for step in range(100):
        x = markov_tokens(16, 32, seed=step)
        model(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    # outlier features, same function: gain x 20 on 4 channels of every LayerNorm before a projection
    channels, factor = torch.tensor([3, 17, 40, 58]), 20.0
    with torch.no_grad():
        for block in model.transformer.h:
            for norm, projection in ((block.ln_1, block.attn.c_attn), (block.ln_2, block.mlp.c_fc)):
                norm.weight[channels] *= factor
                norm.bias[channels] *= factor
                projection.weight[channels, :] /= factor  # Conv1D: rows are input features
    return model


def test_wanda_beats_magnitude_before_recovery_at_equal_sparsity(trained):
    test, calibration = markov_tokens(64, 32, seed=10**6), markov_tokens(32, 32, seed=10**7)
    dense = perplexity(trained, test)
    for amount in (0.5, 0.6):
        magnitude = copy.deepcopy(trained)
        l1_unstructured(magnitude, amount)
        activation_aware = copy.deepcopy(trained)
        wanda.wanda(activation_aware, calibrate(activation_aware, calibration, 16), amount, None)
        ppl_magnitude, ppl_wanda = perplexity(magnitude, test), perplexity(activation_aware, test)
        assert dense < ppl_wanda < ppl_magnitude, (amount, dense, ppl_wanda, ppl_magnitude)
