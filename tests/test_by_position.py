"""tools/eval_ppl.py --by-position: loss per position bucket against a hand computation from the
logits, bucket means that recombine into the overall loss, and the JSON, PNG and TensorBoard
scalars holding the same numbers."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megasci.evaluation import by_position_scalars, evaluate_perplexity, loss_by_position
from megasci.model import build_model, get_config
from megasci.tokenizer import load_tokenizer
from megasci.training.checkpoint import load_model, save_checkpoint
from megasci.training.config import TrainConfig
from megasci.training.metrics import read_metrics
from training_fixtures import make_training_data

SEQ = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("by_position")
    data = make_training_data(str(root / "data"), papers=30)
    cfg = get_config("tiny", vocab_size=data["vocab_size"])
    torch.manual_seed(0)
    train = TrainConfig()
    train.data.seq_length, train.data.split, train.data.tokenizer = SEQ, (0.6, 0.4, 0.0), data["tokenizer"]
    save_checkpoint(
        str(root / "ckpt"),
        3,
        rank=0,
        rank_state={},
        model_state=build_model(cfg).state_dict(),
        meta={
            "model_config": dataclasses.asdict(cfg),
            "train_config": train.to_dict(),
            "tokenizer": load_tokenizer(data["tokenizer"]).identity(),
        },
    )
    return {**data, "checkpoint": str(root / "ckpt"), "root": root}


def test_buckets_equal_a_hand_computation_and_recombine_into_the_overall_loss(setup):
    report = evaluate_perplexity(
        setup["checkpoint"], [setup["prefix"]], max_samples=6, by_position=8, cache_dir=str(setup["root"] / "cache")
    )
    buckets = report["by_position"]
    assert [(b["start"], b["end"], b["samples"]) for b in buckets] == [(0, 8, 6), (8, 16, 6), (16, 24, 6), (24, 32, 6)]
    assert np.mean([b["loss"] for b in buckets]) == pytest.approx(report["overall"]["loss"], rel=1e-5)
    model, _ = load_model(setup["checkpoint"])
    group = GPTDataset(
        GPTDatasetConfig(
            prefix=setup["prefix"],
            split="valid",
            split_fractions=(0.6, 0.4, 0.0),
            seq_length=SEQ,
            seed=1234,
            num_samples=6,
            cache_dir=str(setup["root"] / "cache"),
        )
    )
    rows = torch.from_numpy(np.stack([group[i] for i in range(6)]))
    with torch.no_grad():
        per_token = F.cross_entropy(model(rows[:, :-1]).double().transpose(1, 2), rows[:, 1:], reduction="none")
    per_sample = per_token[:, 8:16].mean(dim=1)
    assert buckets[1]["loss"] == pytest.approx(float(per_sample.mean()), rel=1e-5)
    assert buckets[1]["stderr"] == pytest.approx(float(per_sample.std() / 6**0.5), rel=1e-4)
    assert loss_by_position(model, [], 8, 4, "cpu") == []


def test_the_cli_writes_json_png_and_the_same_scalars_to_tensorboard(setup, capsys):
    from tools.eval_ppl import main

    out = str(setup["root"] / "out")
    assert (
        main(
            [
                "--checkpoint",
                setup["checkpoint"],
                "--data",
                setup["prefix"],
                "--max-samples",
                "4",
                "--by-position",
                "--out-dir",
                out,
                "--cache-dir",
                str(setup["root"] / "cache"),
            ]
        )
        == 0
    )
    assert "positions" in capsys.readouterr().out
    saved = json.load(open(os.path.join(out, "by_position.json")))
    assert len(saved["by_position"]) == 8 and saved["by_position"][0]["end"] == SEQ // 8  # default width
    rows = read_metrics(os.path.join(out, "tensorboard"))
    logged = {tag: value for tag, value in rows[3].items() if tag != "step"}
    assert logged == pytest.approx(by_position_scalars(saved["by_position"]))
    assert open(os.path.join(out, "by_position.png"), "rb").read(4) == b"\x89PNG"
