"""The README's commands work as written: the CPU walkthrough runs end to end, and every other
command names a tool, flag, script or config that exists."""

import contextlib
import io
import os
import re
import runpy
import subprocess
import sys

import pytest

from megasci.model import num_parameters
from megasci.training.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()


def code_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(block):
    """Shell commands of a block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_walkthrough_runs_as_written(tmp_path):
    block = README.split("<!-- walkthrough:start -->")[1].split("<!-- walkthrough:end -->")[0]
    (script,) = code_blocks(block)
    env = dict(os.environ, WORK=str(tmp_path / "work"), OMP_NUM_THREADS="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=REPO, env=env, text=True,
                            capture_output=True, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    work = tmp_path / "work"
    assert (work / "run" / "latest").is_file()
    assert (work / "hf" / "config.json").is_file()
    assert "perplexity" in result.stdout and "overall" in result.stdout.lower()
    assert result.stdout.count("validation at step") >= 2


def _tool_help(tool: str) -> str:
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [tool, "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            runpy.run_path(os.path.join(REPO, tool), run_name="__main__")
    finally:
        sys.argv = argv
    return out.getvalue()


def readme_commands():
    return [c for block in code_blocks(README) for c in commands(block)]


def test_every_tool_command_uses_existing_flags():
    checked = 0
    helps = {}
    for command in readme_commands():
        for tool, args in re.findall(r"(tools/\w+\.py)((?:\s+(?!\||&&)[^\s|&]+)*)", command):
            assert os.path.isfile(os.path.join(REPO, tool)), f"README names {tool}, which does not exist"
            helps.setdefault(tool, _tool_help(tool))
            for flag in re.findall(r"(?<!\S)(--[a-z][\w-]*)", args):
                assert flag in helps[tool], f"README: {tool} has no flag {flag} (in: {command})"
            checked += 1
    assert checked >= 15


def test_scripts_configs_and_make_targets_exist():
    text = " ".join(readme_commands())
    scripts = set(re.findall(r"examples/\w+\.sh", README))
    configs = set(re.findall(r"examples/configs/\w+\.yaml", README))
    assert {"examples/pretrain_1p36b.sh", "examples/pretrain_tiny_cpu.sh"} <= scripts
    for script in scripts:
        assert subprocess.run(["bash", "-n", os.path.join(REPO, script)]).returncode == 0, script
    for config in configs:
        assert os.path.isfile(os.path.join(REPO, config)), config
    makefile = open(os.path.join(REPO, "Makefile")).read()
    for target in re.findall(r"make (\w+)", text):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile has no target {target}"


def test_reference_config_is_the_papers_model(monkeypatch):
    for name in ("TOKENIZER", "ARXIV", "ARXIV_SECTIONS", "WEBMATH", "SAVE_DIR"):
        monkeypatch.setenv(name, f"/data/{name.lower()}")
    cfg = load_config(os.path.join(REPO, "examples", "configs", "pretrain_1p36b.yaml"))
    model = cfg.model.build()
    assert num_parameters(model) == 1_633_781_760
    assert (model.hidden_size, model.n_layers, model.n_heads, model.ffn_hidden_size, model.vocab_size) == \
        (2048, 24, 16, 5504, 102_400)
    assert cfg.data.seq_length == 768 and model.dtype == "bfloat16"
    assert cfg.train.global_batch_size * cfg.train.train_steps * cfg.data.seq_length > 51e9
    assert [s["name"] for s in cfg.data.curriculum] == ["stage1_prose", "stage2_bodies", "stage3_mixed"]
    assert cfg.data.curriculum[2]["blend"][0]["prefix"] == "/data/arxiv"
    monkeypatch.delenv("WEBMATH")
    with pytest.raises(ValueError, match="WEBMATH is not set"):
        load_config(os.path.join(REPO, "examples", "configs", "pretrain_1p36b.yaml"))
