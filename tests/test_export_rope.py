"""HF export of RoPE-scaled models: for each of transformers' variants, the export writes config.json so that
transformers loads it without a warning, `AutoModelForCausalLM` gives our logits at every position up to
the extended length, and the export's own check compares that far and fails on a wrong scaling."""

import dataclasses
import json
import logging

import pytest
import torch

from megasci.corpus.synthetic import generate_papers
from megasci.export.verify import LOGIT_RTOL, Report, _check_logits
from megasci.export_hf import ExportError, export_checkpoint
from megasci.model import build_model, get_config, hf_config_dict, to_hf_state_dict
from megasci.tokenizer import SentencePieceTokenizer, SentencePieceTrainConfig, train_sentencepiece
from megasci.training.checkpoint import save_checkpoint

transformers = pytest.importorskip("transformers")

ORIGINAL, LENGTH = 64, 256  # training length, and the 4x the model is extended to
SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL, "beta_fast": 16.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": ORIGINAL,
    },
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "train.model"
    docs = [p["text"] for p in generate_papers(30, seed=0)]
    train_sentencepiece(docs, str(path), SentencePieceTrainConfig(vocab_size=800, num_threads=2, mined_commands=50))
    return SentencePieceTokenizer(str(path))


def _export(tmp_path, tok, scaling, rope_theta=10_000.0):
    cfg = get_config(
        "tiny", vocab_size=tok.vocab_size, init_std=0.1, max_seq_len=LENGTH, rope_theta=rope_theta, rope_scaling=scaling
    )
    torch.manual_seed(0)
    model = build_model(cfg, dtype=torch.float32).eval()
    meta = {"model_config": dataclasses.asdict(cfg), "tokenizer": tok.identity()}
    save_checkpoint(
        str(tmp_path / "ckpt"), 10, rank=0, rank_state={}, model_state=model.state_dict(), meta=meta, tokenizer=tok
    )
    report = export_checkpoint(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
    return model, report


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_export_loads_without_warnings_and_gives_our_logits_to_the_extended_length(name, tokenizer, tmp_path):
    model, report = _export(tmp_path, tokenizer, SCALINGS[name])
    assert report.logit_positions == LENGTH and report.max_logit_diff <= report.tolerance
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == config["rope_scaling"]["rope_type"] == SCALINGS[name]["rope_type"]
    assert config["max_position_embeddings"] == (ORIGINAL if name == "dynamic" else LENGTH)

    records = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(records)
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    finally:
        logger.removeHandler(records)
    assert records.messages == []
    assert hf.config.rope_parameters["rope_type"] == SCALINGS[name]["rope_type"]
    tokens = torch.randint(0, model.cfg.vocab_size, (1, LENGTH), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert (ours - theirs).abs().max().item() <= LOGIT_RTOL[torch.float32] * max(1.0, ours.abs().max().item())


def test_a_warning_would_be_seen():
    """The capture above works: a yarn config whose max_position_embeddings disagrees with its factor makes
    transformers warn (our config refuses to build such a model)."""
    records = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(records)
    try:
        transformers.LlamaConfig(
            max_position_embeddings=3 * ORIGINAL,
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": ORIGINAL,
                "rope_theta": 1e4,
            },
        )
    finally:
        logger.removeHandler(records)
    assert any("factor" in m for m in records.messages)


@pytest.mark.parametrize("name", ["yarn", "dynamic"])
def test_self_check_fails_past_the_original_length_on_a_wrong_scaling(name, tokenizer, tmp_path):
    """A transformers model with the same weights but plain RoPE agrees with ours on the probe's first
    positions only for dynamic; the long row the export checks catches either."""
    model, _ = _export(tmp_path, tokenizer, SCALINGS[name])
    plain = dataclasses.replace(model.cfg, rope_scaling=None)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(plain))).eval()
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), plain))
    long_row = torch.randint(0, model.cfg.vocab_size, (1, LENGTH), generator=torch.Generator().manual_seed(2))
    if name == "dynamic":  # up to the original length dynamic is plain RoPE: the short check passes
        _check_logits("config.json", model, hf, long_row[:, :ORIGINAL], Report("", "", "float32"))
    with pytest.raises(ExportError, match=f"differ from ours by up to .* over {LENGTH} positions"):
        _check_logits("config.json", model, hf, long_row, Report("", "", "float32"))
