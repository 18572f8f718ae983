"""`train.init_from` (and the evaluation, generation and export tools) given a HuggingFace model directory
itself (issue 19): the run takes the directory's weights, model config and tokenizer through
megasci/model/hf_import.py, exports back the original model at step 0 and after steps at learning rate
0 under 2 gloo ranks, casts it to the run's dtype, fine-tunes under 2 gloo ranks with a falling loss, and
refuses data of another tokenizer, an unsupported config and a missing shard before training, naming the
file and the key."""

import json
import os
import re
import runpy

import pytest
import torch
from safetensors.torch import load_file

from megasci.corpus.synthetic import generate_papers
from megasci.export_hf import export_checkpoint, write_tokenizer_files
from megasci.model.hf_import import HFImportError, hf_model_config, load_hf_state_dict
from megasci.tokenizer import SentencePieceTokenizer, SentencePieceTrainConfig, train_sentencepiece
from megasci.training.checkpoint import CheckpointError
from megasci.training.config import load_config
from megasci.training.metrics import read_metrics
from megasci.training.trainer import Trainer
from training_fixtures import run_pretrain

transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name):
    return runpy.run_path(os.path.join(ROOT, "tools", name))["main"]


def _train_tokenizer(path, seed=0):
    docs = [p["text"] for p in generate_papers(30, seed=seed)]
    train_sentencepiece(docs, str(path), SentencePieceTrainConfig(vocab_size=512, num_threads=2, mined_commands=50))
    return SentencePieceTokenizer(str(path))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random GQA LlamaForCausalLM saved by transformers with a SentencePiece tokenizer, and arXiv-like
    data preprocessed with `--tokenizer-model <the model directory>`."""
    root = tmp_path_factory.mktemp("init_hf")
    tok = _train_tokenizer(root / "sp.model")
    cfg = transformers.LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        initializer_range=0.2,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).float().eval()
    hf_dir = root / "TinyRandomLlama"
    hf.save_pretrained(str(hf_dir))
    write_tokenizer_files(str(hf_dir), tok.path, tok.identity())
    papers = root / "papers.jsonl"
    records = generate_papers(60, seed=7)
    papers.write_text("".join(json.dumps({"id": p["id"], "text": p["text"]}) + "\n" for p in records))
    assert (
        _tool("preprocess_data.py")(
            [
                "--input",
                str(papers),
                "--output-prefix",
                str(root / "arxiv"),
                "--tokenizer-model",
                str(hf_dir),
                "--append-eod",
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    return {
        "root": root,
        "hf_dir": str(hf_dir),
        "hf": hf,
        "prefix": str(root / "arxiv_text_document"),
        "papers": str(papers),
    }


def _overrides(setup, save_dir, **extra):
    values = {
        "model.preset": setup["hf_dir"],
        "data.tokenizer": setup["hf_dir"],
        "train.init_from": setup["hf_dir"],
        "data.blend": f"[1.0, {setup['prefix']}]",
        "data.seq_length": 32,
        "data.split": "[0.9, 0.1, 0.0]",
        "data.eval_samples": 8,
        "data.prefetch": 2,
        "optim.lr": 3e-3,
        "optim.min_lr": 3e-4,
        "optim.warmup_steps": 2,
        "optim.bucket_numel": 20000,
        "train.micro_batch_size": 2,
        "train.global_batch_size": 8,
        "train.train_steps": 6,
        "train.device": "cpu",
        "train.save_dir": save_dir,
        "train.save_interval": 6,
        "train.eval_interval": 6,
        "train.log_interval": 2,
        "train.peak_tflops": 1.0,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def _tensors(directory):
    return load_file(os.path.join(directory, "model.safetensors"))


def test_the_run_starts_from_the_directory_and_exports_the_original_model(setup, tmp_path):
    """Initialised from the directory, zero steps: the export has the original tensors, config and logits."""
    save_dir = str(tmp_path / "run")
    trainer = Trainer(load_config(None, _overrides(setup, save_dir)))
    assert trainer.model.cfg.n_kv_heads == 2 and trainer.model.cfg.vocab_size == setup["hf"].config.vocab_size
    trainer.restore()
    assert trainer.initialized_from == setup["hf_dir"]
    step0 = trainer.checkpointer.save(0)  # the state the first step would start from
    trainer.close()
    assert (
        json.load(open(os.path.join(step0, "meta.json")))["tokenizer"]["sha256"]
        == SentencePieceTokenizer(os.path.join(setup["hf_dir"], "tokenizer.model")).identity()["sha256"]
    )
    export_checkpoint(step0, str(tmp_path / "export"))
    original, exported = _tensors(setup["hf_dir"]), _tensors(tmp_path / "export")
    assert sorted(original) == sorted(exported)
    assert all(torch.equal(original[k], exported[k]) for k in original)
    before, after = (json.load(open(os.path.join(d, "config.json"))) for d in (setup["hf_dir"], tmp_path / "export"))
    for key in ("vocab_size", "hidden_size", "num_key_value_heads", "rope_parameters", "tie_word_embeddings"):
        assert after[key] == before[key], key
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).float().eval()
    tokens = torch.randint(0, before["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = setup["hf"](tokens).logits, back(tokens).logits
    assert want.abs().max() > 1.0 and torch.equal(got, want)


def test_a_float32_directory_starts_a_bf16_run_with_its_weights_cast(setup, tmp_path):
    """model.overrides.dtype still applies to a directory's config (the reference configs train in bf16, and
    TinyLlama's config.json says float32): init_from casts the weights to the run's dtype, as
    transformers' torch_dtype does, instead of refusing the directory as another model."""
    trainer = Trainer(
        load_config(None, _overrides(setup, str(tmp_path / "run"), **{"model.overrides": "{dtype: bfloat16}"}))
    )
    trainer.restore()
    assert trainer.initialized_from == setup["hf_dir"]
    ours = {k: v.detach() for k, v in trainer.model.state_dict().items()}
    trainer.close()
    assert {v.dtype for v in ours.values()} == {torch.bfloat16}
    ours_from_hf = load_hf_state_dict(setup["hf_dir"], hf_model_config(setup["hf_dir"]))
    assert all(torch.equal(ours[k], ours_from_hf[k].to(torch.bfloat16)) for k in ours_from_hf)


def test_two_rank_steps_at_learning_rate_zero_export_the_original_model(setup, tmp_path):
    """2 gloo ranks, 3 real optimizer steps (forward, backward, clipping, AdamW with weight decay 0.1) at
    learning rate 0 at every step: the peak optim.lr must stay positive, so lr 0 is min_lr 0 with no warm-up
    and no decay window (schedule.py then gives min_lr at every step). The export of the last checkpoint has
    the original tensors and transformers' logits, bit for bit."""
    save_dir = str(tmp_path / "lr0")
    overrides = _overrides(
        setup,
        save_dir,
        **{
            "optim.min_lr": 0.0,
            "optim.warmup_steps": 0,
            "optim.decay_steps": 0,
            "optim.weight_decay": 0.1,
            "train.train_steps": 3,
            "train.save_interval": 3,
            "train.eval_interval": 0,
            "train.log_interval": 1,
        },
    )
    stdout = run_pretrain(2, overrides).stdout
    assert f"initialised the weights from {setup['hf_dir']}" in stdout
    metrics = read_metrics(os.path.join(save_dir, "tensorboard"))
    for step in (1, 2, 3):  # each step ran with lr 0, had gradients to apply, and was not skipped
        assert metrics[step]["train/lr"] == 0.0, metrics[step]
        assert metrics[step]["train/grad_norm"] > 0 and metrics[step]["train/skipped_steps"] == 0, metrics[step]
    export_checkpoint(os.path.join(save_dir, "step_00000003"), str(tmp_path / "export"))
    original, exported = _tensors(setup["hf_dir"]), _tensors(tmp_path / "export")
    assert sorted(original) == sorted(exported)
    changed = [k for k in original if not torch.equal(original[k], exported[k])]
    assert not changed, changed
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).float().eval()
    tokens = torch.randint(0, setup["hf"].config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = setup["hf"](tokens).logits, back(tokens).logits
    assert want.abs().max() > 1.0 and torch.equal(got, want)


def test_two_rank_run_from_the_directory_lowers_the_loss(setup):
    save_dir = str(setup["root"] / "two_ranks")
    stdout = run_pretrain(2, _overrides(setup, save_dir)).stdout
    assert f"initialised the weights from {setup['hf_dir']}" in stdout
    metrics = read_metrics(os.path.join(save_dir, "tensorboard"))
    name = "val/loss/arxiv_text_document"
    assert metrics[6][name] < metrics[0][name] - 0.3, (metrics[0][name], metrics[6][name])


def test_data_of_another_tokenizer_fails_before_training_naming_the_file(setup, tmp_path):
    other = _train_tokenizer(tmp_path / "other.model", seed=5)
    assert (
        _tool("preprocess_data.py")(
            [
                "--input",
                setup["papers"],
                "--output-prefix",
                str(tmp_path / "other"),
                "--tokenizer-model",
                other.path,
                "--append-eod",
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    with pytest.raises(ValueError) as raised:
        Trainer(
            load_config(
                None,
                _overrides(
                    setup, str(tmp_path / "run"), **{"data.blend": f"[1.0, {tmp_path / 'other_text_document'}]"}
                ),
            )
        )
    message = str(raised.value)
    assert f"data.tokenizer {setup['hf_dir']} is not the tokenizer the data was written with" in message
    assert str(tmp_path / "other_text_document") in message and "sha256" in message


def test_a_tokenizer_that_is_not_the_models_is_refused_before_the_first_step(setup, tmp_path):
    """data.tokenizer (and the data) of another tokenizer than the directory's: refused at the start, naming both."""
    other = _train_tokenizer(tmp_path / "other.model", seed=5)
    assert (
        _tool("preprocess_data.py")(
            [
                "--input",
                setup["papers"],
                "--output-prefix",
                str(tmp_path / "other"),
                "--tokenizer-model",
                other.path,
                "--append-eod",
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    trainer = Trainer(
        load_config(
            None,
            _overrides(
                setup,
                str(tmp_path / "run"),
                **{"data.tokenizer": other.path, "data.blend": f"[1.0, {tmp_path / 'other_text_document'}]"},
            ),
        )
    )
    with pytest.raises(ValueError) as raised:
        trainer.train()
    message = str(raised.value)
    assert os.path.join(setup["hf_dir"], "tokenizer.model") in message and other.path in message
    assert "token ids would mean other things" in message


def test_unsupported_config_and_missing_shard_fail_before_training(setup, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in os.listdir(setup["hf_dir"]):
        os.symlink(os.path.join(setup["hf_dir"], name), bad / name)
    config = json.load(open(os.path.join(setup["hf_dir"], "config.json")))
    os.remove(bad / "config.json")
    json.dump({**config, "attention_bias": True}, open(bad / "config.json", "w"))
    # the config checks fail on it (wrapping HFImportError's message), before the run starts
    with pytest.raises(ValueError, match=re.escape(f"{bad / 'config.json'}: cannot import exactly: attention_bias")):
        load_config(None, _overrides(setup, str(tmp_path / "run"), **{"model.preset": str(bad)}))

    sharded = tmp_path / "sharded"
    setup["hf"].save_pretrained(str(sharded), max_shard_size="60KB")
    for name in ("tokenizer.model", "tokenizer.meta.json"):
        if os.path.exists(os.path.join(setup["hf_dir"], name)):
            os.symlink(os.path.join(setup["hf_dir"], name), sharded / name)
    shard = sorted(n for n in os.listdir(sharded) if n.startswith("model-"))[1]
    os.remove(sharded / shard)
    trainer = Trainer(
        load_config(
            None,
            _overrides(
                setup,
                str(tmp_path / "run2"),
                **{"model.preset": str(sharded), "train.init_from": str(sharded), "data.tokenizer": str(sharded)},
            ),
        )
    )
    with pytest.raises((HFImportError, CheckpointError), match=rf"{shard}: missing; .*model\.safetensors\.index"):
        trainer.train()
    assert not os.path.exists(tmp_path / "run2" / "step_00000001")


def test_the_tools_take_the_directory(setup, tmp_path, capsys):
    """generate.py, eval_ppl.py and export_hf.py read the directory as they read a checkpoint."""
    hf_dir = setup["hf_dir"]
    assert (
        _tool("generate.py")(
            [
                "--checkpoint",
                hf_dir,
                "--prompt",
                "We prove",
                "--temperature",
                "0",
                "--max-new-tokens",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("We prove")
    assert (
        _tool("eval_ppl.py")(
            [
                "--checkpoint",
                hf_dir,
                "--data",
                setup["prefix"],
                "--split",
                "all",
                "--seq-length",
                "32",
                "--max-samples",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "arxiv_text_document" in capsys.readouterr().out
    assert _tool("export_hf.py")(["--checkpoint", hf_dir, "--output", str(tmp_path / "export")]) == 0
    original, exported = _tensors(hf_dir), _tensors(tmp_path / "export")
    assert all(torch.equal(original[k], exported[k]) for k in original)
