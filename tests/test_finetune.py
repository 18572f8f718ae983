"""Fine-tuning on the pretraining stack, end to end on CPU: a tiny pretrained checkpoint, SFT data
from generated conversations, then `train.init_from` with document masking under 2 ranks (ZeRO-2):
weights only are taken, the step counter starts at 0, exact resume from the fine-tune's own save_dir,
TensorBoard scalars, and a falling assistant-token loss."""

import json
import os

import numpy as np
import pytest
import torch

from megasci.corpus.synthetic import generate_papers
from megasci.data.indexed_dataset import IndexedDatasetWriter
from megasci.data.sft import SFTConfig, preprocess_sft
from megasci.data.synthetic_chat import generate_conversations
from megasci.tokenizer import SentencePieceTrainConfig, load_tokenizer, train_sentencepiece
from megasci.training import checkpoint as ckpt
from megasci.training.config import load_config
from megasci.training.metrics import read_metrics
from megasci.training.trainer import Trainer, pretrain
from training_fixtures import run_pretrain


def _base(tokenizer, vocab_size, save_dir, **extra):
    values = {
        "model.preset": "tiny",
        "model.overrides": f"{{vocab_size: {vocab_size}}}",
        "data.tokenizer": tokenizer,
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
        "train.device": "cpu",
        "train.save_dir": save_dir,
        "train.log_interval": 2,
        "train.peak_tflops": 1.0,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    papers = list(generate_papers(40, seed=7))
    conversations = list(generate_conversations(300, seed=1))
    model = str(root / "chat.model")
    text = [p["text"] for p in papers] + [m["content"] for c in conversations for m in c["messages"]]
    train_sentencepiece(
        text,
        model,
        SentencePieceTrainConfig(vocab_size=512, num_threads=2, mined_commands=50, chat_template="megasci-v1"),
    )
    tokenizer = load_tokenizer(model)
    pretrain_prefix = str(root / "arxiv_text_document")
    with IndexedDatasetWriter(pretrain_prefix, dtype=np.uint16) as writer:
        for paper in papers:
            writer.add_document(np.array(tokenizer.encode(paper["text"]) + [tokenizer.eod_id], dtype=np.uint16))
    pretrained = str(root / "pretrained")
    pretrain(
        load_config(
            None,
            _base(
                model,
                tokenizer.vocab_size,
                pretrained,
                **{
                    "data.blend": f"[1, {pretrain_prefix}]",
                    "train.train_steps": 4,
                    "train.eval_interval": 0,
                    "train.save_interval": 4,
                },
            ),
        )
    )
    chats = root / "chats.jsonl"
    chats.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    preprocess_sft(SFTConfig([str(chats)], str(root / "sft"), model, append_eod=True), progress=False)
    return {
        "root": root,
        "tokenizer": model,
        "vocab_size": tokenizer.vocab_size,
        "pretrained": pretrained,
        "sft_prefix": str(root / "sft_text_document"),
    }


def _finetune(setup, save_dir, **extra):
    return _base(
        setup["tokenizer"],
        setup["vocab_size"],
        save_dir,
        **{
            "data.blend": f"[1.0x, {setup['sft_prefix']}]",
            "data.document_mask": "true",
            "train.init_from": setup["pretrained"],
            "train.train_steps": 8,
            "train.save_interval": 4,
            "train.eval_interval": 4,
            **extra,
        },
    )


def test_init_from_takes_the_weights_only(setup, tmp_path):
    """The fine-tune starts from exactly the pretrained weights, and counts its own steps from 0."""
    save_dir = str(tmp_path / "init")
    trainer = Trainer(
        load_config(
            None,
            _finetune(setup, save_dir, **{"train.train_steps": 1, "optim.warmup_steps": 1, "train.eval_interval": 0}),
        )
    )
    before = torch.load(os.path.join(ckpt.latest_checkpoint(setup["pretrained"]), ckpt.MODEL_NAME), weights_only=True)
    trainer.restore()
    started = trainer.model.state_dict()
    assert all(torch.equal(started[k], before[k]) for k in before)
    summary = trainer.train()
    assert summary.start_step == 0 and summary.end_step == 1
    assert ckpt.read_meta(save_dir)["step"] == 1  # its own counter, not the pretraining's step 4


def test_sft_needs_document_masking(setup, tmp_path):
    with pytest.raises(ValueError, match="document_mask"):
        pretrain(load_config(None, _finetune(setup, str(tmp_path / "nomask"), **{"data.document_mask": "false"})))


@pytest.fixture(scope="module")
def finetuned(setup):
    """An 8-step 2-rank fine-tune straight through; its stdout."""
    straight = str(setup["root"] / "ft_straight")
    return straight, run_pretrain(2, _finetune(setup, straight)).stdout


def test_two_rank_finetune_resumes_exactly_and_the_assistant_loss_falls(setup, finetuned):
    straight, stdout = finetuned
    resumed = str(setup["root"] / "ft_resumed")
    assert "initialised the weights from" in stdout
    run_pretrain(2, _finetune(setup, resumed, **{"train.exit_interval": 4}))
    second = run_pretrain(2, _finetune(setup, resumed, **{"train.exit_interval": 4}))
    assert "resumed from" in second.stdout and "initialised the weights" not in second.stdout
    a, b = read_metrics(os.path.join(straight, "tensorboard")), read_metrics(os.path.join(resumed, "tensorboard"))
    assert [a[s]["train/loss"] for s in range(1, 9)] == [b[s]["train/loss"] for s in range(1, 9)]
    name = "val/loss/sft_text_document"
    assert a[8][name] < a[0][name] - 0.3, (a[0][name], a[8][name])
    final = {
        k: torch.load(os.path.join(ckpt.latest_checkpoint(d), ckpt.MODEL_NAME), weights_only=True)
        for k, d in (("a", straight), ("b", resumed))
    }
    assert all(torch.equal(final["a"][k], final["b"][k]) for k in final["a"])


def test_the_hf_export_chats_like_our_model(setup, finetuned, tmp_path, run_tool, capsys):
    """Exported: AutoTokenizer's chat template gives our prompt ids, AutoModelForCausalLM's greedy reply
    is ours, and tools/generate.py --chat-file answers with that reply."""
    transformers = pytest.importorskip("transformers")
    from megasci.export_hf import export_checkpoint
    from megasci.model.generate import generate

    straight, _ = finetuned
    export_checkpoint(straight, str(tmp_path / "hf"))
    tok = load_tokenizer(setup["tokenizer"])
    question = [{"role": "user", "content": "What is three plus four?"}]
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    out = hf_tok.apply_chat_template(question, tokenize=True, add_generation_prompt=True)
    prompt = list(out["input_ids"] if hasattr(out, "keys") else out)
    assert prompt == tok.chat_template.bind(tok).encode(question, add_generation_prompt=True)[0].tolist()

    ids = [tok.eod_id] + prompt  # as tools/generate.py feeds it: after an EOD, like every packed conversation
    end_id = tok.chat_template.bind(tok).end_id
    model, _ = ckpt.load_model(straight)
    ours = generate(model.eval(), ids, 12, temperature=0.0, eos_id=end_id)[0].tolist()
    with torch.no_grad():
        theirs = hf.generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=end_id, pad_token_id=end_id
        )[0].tolist()
    assert theirs[: len(ours)] == ours

    chats = tmp_path / "questions.jsonl"
    chats.write_text(json.dumps({"id": "q1", "messages": question}) + "\n")
    assert (
        run_tool(
            "generate.py",
            ["--checkpoint", straight, "--chat-file", str(chats), "--temperature", "0", "--max-new-tokens", "12"],
        )
        == 0
    )
    answered = json.loads(capsys.readouterr().out)
    new = ours[len(ids) :]
    reply = tok.decode(new[: new.index(end_id)] if end_id in new else new)
    assert answered["id"] == "q1" and answered["messages"] == question + [{"role": "assistant", "content": reply}]


def test_the_example_finetune_config_is_the_plans_three_sources(monkeypatch):
    from megasci.data.blended_dataset import parse_blend

    for name in ("TOKENIZER", "SE_STEM", "MATHINSTRUCT", "ULTRACHAT", "PRETRAINED", "SAVE_DIR"):
        monkeypatch.setenv(name, f"/data/{name.lower()}")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(repo, "examples", "configs", "finetune_sft.yaml"))
    blend = parse_blend(cfg.data.blend)
    assert [(s.name, s.weight, s.weight_kind) for s in blend] == [
        ("stackexchange_stem", 1.0, "epochs"),
        ("mathinstruct", 1.0, "epochs"),
        ("ultrachat", 1.0, "epochs"),
    ]
    assert cfg.data.document_mask and cfg.train.init_from == "/data/pretrained"
    assert cfg.model.build().n_layers == 24 and cfg.data.seq_length <= cfg.model.build().max_seq_len
