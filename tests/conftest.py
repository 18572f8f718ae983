"""Fixtures shared by several test files."""

import os
import runpy
import sys

import pytest

from megasci import ops

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools")


@pytest.fixture
def attention_backend():
    """Yields a setter for our attention backend and restores "auto" afterwards."""
    yield lambda name: ops.set_backend("attention", name)
    ops.set_backend("attention", "auto")


@pytest.fixture
def run_tool(monkeypatch):
    """`run_tool("eval_ppl.py", [args...])` runs tools/<name> as a script; returns its exit code."""
    def run(name: str, args: list[str]) -> int:
        monkeypatch.setattr(sys, "argv", [name] + list(args))
        with pytest.raises(SystemExit) as done:
            runpy.run_path(os.path.join(TOOLS, name), run_name="__main__")
        return done.value.code
    return run
