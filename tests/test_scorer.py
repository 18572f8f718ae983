"""The scorer against its peers: transformers' LlamaForCausalLM on our export, and lm-evaluation-harness's
own HFLM and multiple-choice task code given the same requests."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from downstream_fixtures import EXAMPLES, make_export, make_tokenizer, write_task
from megasci.downstream import (
    as_encoder,
    bootstrap_stderr,
    encode_pair,
    encode_requests,
    evaluate_tasks,
    example_metrics,
    load_jsonl,
    score,
)
from megasci.downstream.scorer import Score, TokenRequest

transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-5  # float32, relative, as the acceptance asks
NO_LM_EVAL = "lm-evaluation-harness is a test-only dependency: pip install 'lm-eval[hf]'"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorer")
    tok = make_tokenizer(root / "tok.model")
    model, ckpt, hf_dir = make_export(root, tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    task = load_jsonl(write_task(root / "task.jsonl"))
    requests = [(e.context, c) for e in task.examples for c in e.choices]
    return {"root": root, "tok": tok, "model": model, "hf": hf, "hf_tok": hf_tok, "task": task, "requests": requests}


def _reference(hf, hf_tok, requests):
    """Each request alone through LlamaForCausalLM: the log-probabilities of the continuation tokens
    (ids split by HFLM's rule on the HF tokenizer), summed, and whether each is the argmax."""
    window = hf.config.max_position_embeddings
    out = []
    for context, continuation in requests:
        ctx, cont = encode_pair(context, continuation, as_encoder(hf_tok))
        inp = torch.tensor([(ctx + cont)[-(window + 1) :][:-1]])
        with torch.no_grad():
            logprobs = F.log_softmax(hf(inp).logits[0, -len(cont) :], dim=-1)
        target = torch.tensor(cont)
        out.append((logprobs.gather(1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())))
    return out


def _close(a, b, rtol=RTOL):
    return abs(a - b) <= rtol * max(abs(a), abs(b))


def test_our_scores_equal_llama_for_causal_lm(setup):
    s = setup
    ours = score(s["model"], encode_requests(s["requests"], s["tok"]), batch_size=4)
    theirs = _reference(s["hf"], s["hf_tok"], s["requests"])
    assert any(r.truncated for r in ours)  # the long context was cut to the window
    assert min(abs(r.loglikelihood) for r in ours) > 1.0  # far from zero, so 1e-5 relative means something
    for (context, continuation), r, (ll, greedy) in zip(s["requests"], ours, theirs):
        assert _close(r.loglikelihood, ll), (context[-30:], continuation, r.loglikelihood, ll)
        assert r.greedy == greedy
        assert (r.chars, r.bytes) == (len(continuation), len(continuation.encode("utf-8")))
    # the transformers model through the same scorer (the --hf-model path) gives the same numbers
    via_hf = score(s["hf"], encode_requests(s["requests"], s["hf_tok"]), batch_size=3)
    assert all(_close(a.loglikelihood, b.loglikelihood) for a, b in zip(ours, via_hf))


def test_a_greedy_continuation_is_recognised(setup):
    """The model's own greedy tokens score greedy=True; one token changed scores False."""
    s = setup
    ctx = s["tok"].encode("Let $G$ be a group. Then")
    ids = list(ctx)
    with torch.no_grad():
        for _ in range(4):
            ids.append(int(s["model"](torch.tensor([ids]))[0, -1].argmax()))
    greedy = TokenRequest(tuple(ctx), tuple(ids[len(ctx) :]))
    other = TokenRequest(tuple(ctx), tuple(ids[len(ctx) : -1]) + ((ids[-1] + 1) % 1200,))
    a, b = score(s["model"], [greedy, other])
    assert a.greedy and not b.greedy and a.tokens == 4 and a.chars is None


def test_batching_does_not_change_scores(setup):
    s = setup
    reqs = encode_requests(s["requests"], s["tok"])
    one = score(s["model"], reqs, batch_size=1)
    for batch_size in (2, 5, 64):
        assert all(
            _close(a.loglikelihood, b.loglikelihood, 1e-6)
            for a, b in zip(one, score(s["model"], reqs, batch_size=batch_size))
        )


def test_two_gloo_ranks_each_score_a_share_and_agree_with_one_process(setup, tmp_path):
    """tools/eval_tasks.py under torchrun: the gathered per-example scores equal a single process's."""
    s = setup
    task = write_task(tmp_path / "sci.jsonl")
    common = [
        os.path.join(ROOT, "tools", "eval_tasks.py"),
        "--checkpoint",
        str(s["root"] / "ckpt"),
        "--tasks",
        task,
        "--device",
        "cpu",
        "--batch-size",
        "2",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for nproc, out in ((2, "dp2.jsonl"), (1, "dp1.jsonl")):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--standalone",
            *common,
            "--per-example",
            str(tmp_path / out),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count("value ± stderr") == 1  # rank 0 alone prints
    dp2, dp1 = (
        [json.loads(line) for line in (tmp_path / name).read_text().splitlines()] for name in ("dp2.jsonl", "dp1.jsonl")
    )
    assert [r["id"] for r in dp2] == [r["id"] for r in dp1] and len(dp1) == len(EXAMPLES)
    for a, b in zip(dp2, dp1):
        assert all(_close(x, y, 1e-6) for x, y in zip(a["loglikelihoods"], b["loglikelihoods"]))
        assert (a["acc"], a["acc_norm"], a["greedy"]) == (b["acc"], b["acc_norm"], b["greedy"])


def test_hflm_gives_the_same_loglikelihoods(setup):
    lm_eval = pytest.importorskip("lm_eval", reason=NO_LM_EVAL)
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    s = setup
    lm = HFLM(pretrained=s["hf"], tokenizer=s["hf_tok"], batch_size=4, device="cpu")
    instances = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(s["requests"])]
    theirs = lm.loglikelihood(instances, disable_tqdm=True)
    ours = score(s["model"], encode_requests(s["requests"], s["tok"]), batch_size=4)
    assert lm_eval is not None and len(theirs) == len(ours)
    for r, (ll, greedy) in zip(ours, theirs):
        assert _close(r.loglikelihood, ll) and r.greedy == greedy


def test_lm_eval_task_gives_the_same_acc_and_acc_norm_per_example(setup, tmp_path):
    """lm-eval's own multiple-choice pipeline (ConfigurableTask.process_results through
    evaluator.evaluate) on the same JSONL file: choices appended as written (target delimiter "")."""
    pytest.importorskip("lm_eval", reason=NO_LM_EVAL)
    from lm_eval import evaluator
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM

    s = setup
    path = write_task(tmp_path / "mc.jsonl", [{k: v for k, v in e.items() if k != "id"} for e in EXAMPLES])
    task = ConfigurableTask(
        config={
            "task": "megasci_mc",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": path}, "cache_dir": str(tmp_path / "hf_cache")},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "context",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "target_delimiter": "",
            "num_fewshot": 0,
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        }
    )
    lm = HFLM(pretrained=s["hf"], tokenizer=s["hf_tok"], batch_size=4, device="cpu")
    out = evaluator.evaluate(lm, {"megasci_mc": task}, log_samples=True, bootstrap_iters=0)
    samples = sorted(out["samples"]["megasci_mc"], key=lambda x: x["doc_id"])
    [result] = evaluate_tasks(s["model"], [s["task"]], s["tok"], batch_size=4)
    assert len(samples) == len(result.per_example) == len(EXAMPLES)
    for theirs, ours in zip(samples, result.per_example):
        lls = [float(r[0]) for r in theirs["filtered_resps"]]
        assert all(_close(a, b) for a, b in zip(ours["loglikelihoods"], lls))
        assert (ours["acc"], ours["acc_norm"]) == (theirs["acc"], theirs["acc_norm"])
    # the per-character normalisation must decide at least one example differently from acc, or the
    # comparison above could not tell the two apart
    assert any(r["acc"] != r["acc_norm"] for r in result.per_example) or any(
        np.argmax(r["loglikelihoods"]) != np.argmax(np.array(r["loglikelihoods"]) / [len(c) for c in e.choices])
        for r, e in zip(result.per_example, s["task"].examples)
    )


def test_example_metrics_by_hand():
    """acc takes the raw argmax, acc_norm divides by characters (the leading space counts), bpb is
    the gold's nats per byte over ln 2."""
    choices = [" a", " bbbbbbbbb", " ccc"]
    scores = [Score(ll, 1, len(c), len(c), False, False) for ll, c in zip([-4.0, -5.0, -4.5], choices)]
    m = example_metrics(choices, 1, scores)
    assert m["acc"] == 0.0 and m["acc_norm"] == 1.0  # -5/10 beats -4/2 and -4.5/4
    assert m["bpb"] == pytest.approx(5.0 / 10 / math.log(2))
    assert example_metrics(choices, 0, scores)["acc"] == 1.0


def test_bootstrap_stderr_is_seeded_and_near_the_analytic_value():
    rng = np.random.default_rng(0)
    values = (rng.random(400) < 0.3).astype(float)
    a, b = bootstrap_stderr(values), bootstrap_stderr(values)
    assert a == b
    analytic = values.std(ddof=1) / math.sqrt(values.size)
    assert abs(a - analytic) < 0.1 * analytic
    assert bootstrap_stderr(values, seed=1) != a
    assert math.isnan(bootstrap_stderr([1.0]))


def test_an_empty_context_and_a_moved_space_follow_hflm(setup):
    enc = as_encoder(setup["tok"])
    ctx, cont = encode_pair("", "Theorem.", enc)
    assert ctx == [setup["tok"].bos_id] and cont == setup["tok"].encode("Theorem.")
    ctx, cont = encode_pair("The derivative is ", "x", enc)
    whole = setup["tok"].encode("The derivative is x")
    assert ctx == setup["tok"].encode("The derivative is") and ctx + cont == whole


def test_continuation_longer_than_the_window_is_refused(setup):
    req = TokenRequest((5,), tuple(range(10, 10 + 129)))
    with pytest.raises(ValueError, match="continuation of 129 tokens exceeds the model's window of 128"):
        score(setup["model"], [req])
