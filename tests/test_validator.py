"""training/validator.py: evaluate() against per-token cross-entropy by hand, perplexity, and the
trainer's Validator (scalars, console line, training mode restored)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megasci.model import build_model, get_config
from megasci.training.metrics import MetricsLog, read_metrics
from megasci.training.validator import Validator, evaluate, perplexity

CFG = get_config("tiny")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(CFG)


def samples(n, seed, seq=9):
    return [np.random.default_rng([seed, i]).integers(0, CFG.vocab_size, seq + 1) for i in range(n)]


def token_loss_sum(model, dataset):
    """Summed cross-entropy of every predicted token, from the full logits, one sample at a time."""
    total = 0.0
    with torch.no_grad():
        for sample in dataset:
            tokens = torch.as_tensor(sample, dtype=torch.long)[None]
            logits = model(tokens[:, :-1]).double()
            total += float(F.cross_entropy(logits[0], tokens[0, 1:], reduction="sum"))
    return total


def test_evaluate_is_the_mean_token_loss_per_source_and_overall(model):
    datasets = {"a": samples(5, seed=1), "b": samples(3, seed=2)}
    losses = evaluate(model, datasets, batch_size=2, device="cpu")
    sums = {name: token_loss_sum(model, ds) for name, ds in datasets.items()}
    assert losses["a"] == pytest.approx(sums["a"] / (5 * 9), rel=1e-6)
    assert losses["b"] == pytest.approx(sums["b"] / (3 * 9), rel=1e-6)
    assert losses["all"] == pytest.approx((sums["a"] + sums["b"]) / (8 * 9), rel=1e-6)
    assert evaluate(model, {}, 2, "cpu") == {}


def test_perplexity():
    assert perplexity(2.0) == pytest.approx(math.exp(2.0))
    assert perplexity(60.0) == pytest.approx(math.exp(60.0))  # no clamp below the overflow
    assert perplexity(700.0) == math.inf and perplexity(1e6) == math.inf
    assert perplexity(None) is None
    assert math.isnan(perplexity(float("nan")))


def test_validator_logs_prints_and_restores_training_mode(model, tmp_path, capsys):
    datasets = {"a": samples(4, seed=1), "b": samples(4, seed=2)}
    log = MetricsLog(str(tmp_path), active=True)
    model.train()
    validate = Validator(model, datasets, 3, "cpu", 0, 1, log)
    assert validate and not Validator(model, {}, 3, "cpu", 0, 1, log)
    losses = validate(7)
    log.close()
    assert model.training
    assert losses == evaluate(model, datasets, 3, "cpu")
    row = read_metrics(str(tmp_path))[7]
    for name in ("a", "b", "all"):
        assert row[f"val/loss/{name}"] == losses[name]
        assert row[f"val/ppl/{name}"] == pytest.approx(math.exp(losses[name]))
    assert capsys.readouterr().out == (
        f"validation at step 7: loss {losses['all']:.4f}, perplexity "
        f"{math.exp(losses['all']):.2f} (a {math.exp(losses['a']):.2f}, "
        f"b {math.exp(losses['b']):.2f})\n"
    )
