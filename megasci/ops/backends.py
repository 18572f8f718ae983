"""Registry that picks one implementation per op, so kernels can be swapped without touching the model.

Every op has a plain PyTorch ``reference`` implementation that runs everywhere and defines the
numerics. Faster implementations (our Triton kernels, apex, flash-attn) register under another
name. ``set_backend(op, "auto")`` (the default) lets each call
choose from its inputs, for example apex only for CUDA tensors; naming a backend forces it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

AUTO = "auto"
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what every one of our Triton kernels takes


@dataclass
class _Backend:
    fn: Callable
    available: Callable[[], bool]


_registry: dict[str, dict[str, _Backend]] = {}
_auto: dict[str, Callable[..., str]] = {}
_selected: dict[str, str] = {}


def module_available(name: str) -> bool:
    """True when ``name`` can be imported, without importing it (imports of CUDA packages are slow)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def register_op(op: str, auto: Callable[..., str]) -> None:
    """Declare ``op``; ``auto`` maps a call's arguments to the backend name to use."""
    _registry.setdefault(op, {})
    _auto[op] = auto
    _selected.setdefault(op, AUTO)


def register_backend(op: str, name: str, fn: Callable, available: Callable[[], bool] = lambda: True) -> None:
    """Add (or replace) implementation ``name`` of ``op``; ``available`` says whether it can run here."""
    if op not in _registry:
        raise KeyError(f"unknown op {op!r}; known: {sorted(_registry)}")
    if name == AUTO:
        raise ValueError(f"{AUTO!r} is reserved for automatic selection")
    _registry[op][name] = _Backend(fn, available)


def available_backends(op: str) -> list[str]:
    """Names of the implementations of ``op`` that can run in this environment."""
    _check_op(op)
    return sorted(name for name, b in _registry[op].items() if b.available())


def set_backend(op: str, name: str) -> None:
    """Force ``op`` to use backend ``name``, or ``"auto"`` to choose per call."""
    _check_op(op)
    if name != AUTO:
        backend = _registry[op].get(name)
        if backend is None:
            raise ValueError(f"{op}: no backend {name!r} registered; registered: {sorted(_registry[op])}")
        if not backend.available():
            raise ValueError(f"{op}: backend {name!r} is registered but cannot run here (missing package?)")
    _selected[op] = name


def get_backend(op: str) -> str:
    """The backend setting of ``op``: a backend name or ``"auto"``."""
    _check_op(op)
    return _selected[op]


def resolve_backend(op: str, *args, **kwargs) -> str:
    """The backend that a call of ``op`` with these arguments would use."""
    _check_op(op)
    name = _selected[op]
    return _auto[op](*args, **kwargs) if name == AUTO else name


def dispatch(op: str, *args, **kwargs):
    """Run ``op`` with its selected backend."""
    return _registry[op][resolve_backend(op, *args, **kwargs)].fn(*args, **kwargs)


def _check_op(op: str) -> None:
    if op not in _registry:
        raise KeyError(f"unknown op {op!r}; known: {sorted(_registry)}")
