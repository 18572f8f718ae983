"""The documentation's commands work as written, in README.md and in every page under docs/: the CPU
walkthrough runs end to end, and every other command names a tool, flag, script, config or make
target that exists. Links between the pages point at files and headings that exist."""

import contextlib
import functools
import glob
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
PAGES = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))


def read(page: str) -> str:
    with open(os.path.join(REPO, page), encoding="utf-8") as f:
        return f.read()


TEXTS = {page: read(page) for page in PAGES}


def code_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(block):
    """Shell commands of a block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [line.split(" #")[0].strip() for line in lines]


def page_commands(page: str) -> list[str]:
    return [c for block in code_blocks(TEXTS[page]) for c in commands(block)]


def walkthrough() -> tuple[str, str]:
    """(the page that holds the walkthrough, its script): exactly one page has it."""
    found = [
        (page, text.split("<!-- walkthrough:start -->")[1].split("<!-- walkthrough:end -->")[0])
        for page, text in TEXTS.items()
        if "<!-- walkthrough:start -->" in text
    ]
    assert len(found) == 1, [page for page, _ in found]
    page, block = found[0]
    (script,) = code_blocks(block)
    return page, script


def test_the_pages_are_the_readme_and_the_topic_pages():
    for topic in (
        "corpus",
        "tokenizer-and-datasets",
        "training",
        "post-training",
        "evaluation",
        "export",
        "scaling-out",
        "benchmarks",
    ):
        assert f"docs/{topic}.md" in PAGES
        assert f"(docs/{topic}.md)" in TEXTS["README.md"], f"README does not link docs/{topic}.md"
    assert len(TEXTS["README.md"].splitlines()) <= 250  # the front door stays short


def test_walkthrough_runs_as_written(tmp_path):
    _, script = walkthrough()
    env = dict(
        os.environ,
        WORK=str(tmp_path / "work"),
        OMP_NUM_THREADS="1",
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script], cwd=REPO, env=env, text=True, capture_output=True, timeout=900
    )
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    work = tmp_path / "work"
    assert (work / "run" / "latest").is_file()
    assert (work / "hf" / "config.json").is_file()
    assert "perplexity" in result.stdout and "overall" in result.stdout.lower()
    assert result.stdout.count("validation at step") >= 2


@functools.cache
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


def tool_command_errors(command: str) -> tuple[list[str], int]:
    """(what is wrong with the `tools/*.py` invocations in one shell command, how many it holds)."""
    errors, checked = [], 0
    for tool, args in re.findall(r"(tools/\w+\.py)((?:\s+(?!\||&&)[^\s|&>]+)*)", command):
        checked += 1
        if not os.path.isfile(os.path.join(REPO, tool)):
            errors.append(f"{tool} does not exist (in: {command})")
            continue
        for flag in re.findall(r"(?<!\S)(--[a-z][\w-]*)", args):
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", _tool_help(tool)):
                errors.append(f"{tool} has no flag {flag} (in: {command})")
    return errors, checked


@pytest.mark.parametrize("page", PAGES)
def test_every_tool_command_uses_existing_flags(page):
    errors = [e for command in page_commands(page) for e in tool_command_errors(command)[0]]
    assert not errors, f"{page}:\n" + "\n".join(errors)


def test_the_pages_hold_the_pipelines_commands():
    checked = {page: sum(tool_command_errors(c)[1] for c in page_commands(page)) for page in PAGES}
    assert checked["README.md"] >= 10 and sum(checked.values()) >= 30, checked


def test_the_flag_check_catches_a_wrong_flag_or_tool():
    good = "python tools/eval_ppl.py --checkpoint runs/x --data data/y --by section"
    assert tool_command_errors(good) == ([], 1)
    (error,), _ = tool_command_errors(good + " --made-up-flag 3")
    assert "tools/eval_ppl.py has no flag --made-up-flag" in error
    (error,), _ = tool_command_errors("python tools/eval_ppl.py --check runs/x")  # a prefix of --checkpoint
    assert "no flag --check" in error
    (error,), _ = tool_command_errors("python tools/no_such_tool.py --input x")
    assert "tools/no_such_tool.py does not exist" in error
    # The same check runs over the docs pages: a page with a wrong flag fails it.
    page = "```bash\npython tools/export_hf.py --checkpoint runs/x \\\n    --output hf/x --no-such-option\n```\n"
    (command,) = [c for block in code_blocks(page) for c in commands(block)]
    assert tool_command_errors(command)[0] == [f"tools/export_hf.py has no flag --no-such-option (in: {command})"]


def test_scripts_configs_and_make_targets_exist():
    every = {page: " ".join(page_commands(page)) for page in PAGES}
    scripts = {s for text in TEXTS.values() for s in re.findall(r"(?:examples|benchmarks)/[\w/]+\.(?:sh|sbatch)", text)}
    configs = {c for text in TEXTS.values() for c in re.findall(r"examples/configs/\w+\.yaml", text)}
    assert {"examples/pretrain_1p36b.sh", "examples/pretrain_tiny_cpu.sh", "examples/finetune_sft.sh"} <= scripts
    for script in scripts:
        assert os.path.isfile(os.path.join(REPO, script)), script
        assert subprocess.run(["bash", "-n", os.path.join(REPO, script)]).returncode == 0, script
    for config in configs:
        assert os.path.isfile(os.path.join(REPO, config)), config
    makefile = read("Makefile")
    targets = {(page, t) for page, text in every.items() for t in re.findall(r"(?<![\w-])make ([\w-]+)", text)}
    targets |= {(page, t) for page, text in TEXTS.items() for t in re.findall(r"`make ([\w-]+)", text)}
    assert {t for _, t in targets} >= {"demo", "test", "demo-sft"}
    for page, target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"{page}: Makefile has no target {target}"


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES)
def test_links_between_pages_resolve(page):
    for target, anchor in re.findall(r"\]\(((?!https?:|mailto:)[^)#\s]*)(?:#([^)\s]+))?\)", TEXTS[page]):
        path = (
            os.path.normpath(os.path.join(REPO, os.path.dirname(page), target)) if target else os.path.join(REPO, page)
        )
        assert os.path.exists(path), f"{page} links {target}, which does not exist"
        if anchor and path.endswith(".md"):
            headings = _anchors(read(os.path.relpath(path, REPO)))
            assert anchor in headings, f"{page} links {target}#{anchor}: no such heading"


def test_reference_config_is_the_papers_model(monkeypatch):
    for name in ("TOKENIZER", "ARXIV", "ARXIV_SECTIONS", "WEBMATH", "SAVE_DIR"):
        monkeypatch.setenv(name, f"/data/{name.lower()}")
    cfg = load_config(os.path.join(REPO, "examples", "configs", "pretrain_1p36b.yaml"))
    model = cfg.model.build()
    assert num_parameters(model) == 1_633_781_760
    assert (model.hidden_size, model.n_layers, model.n_heads, model.ffn_hidden_size, model.vocab_size) == (
        2048,
        24,
        16,
        5504,
        102_400,
    )
    assert cfg.data.seq_length == 768 and model.dtype == "bfloat16"
    assert cfg.train.global_batch_size * cfg.train.train_steps * cfg.data.seq_length > 51e9
    assert [s["name"] for s in cfg.data.curriculum] == ["stage1_prose", "stage2_bodies", "stage3_mixed"]
    assert cfg.data.curriculum[2]["blend"][0]["prefix"] == "/data/arxiv"
    monkeypatch.delenv("WEBMATH")
    with pytest.raises(ValueError, match="WEBMATH is not set"):
        load_config(os.path.join(REPO, "examples", "configs", "pretrain_1p36b.yaml"))
