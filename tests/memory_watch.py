"""Counts the bytes of large tensors alive at once on any device, CPU included (no allocator statistics needed)."""

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LargeTensorWatch(TorchDispatchMode):
    """Within the ``with`` block, ``peak`` is the most bytes held at once by tensors of at least
    ``min_numel`` elements that ops allocated, each storage counted once; tensors from before the block
    (inputs, parameters) and views of them are not counted."""

    def __init__(self, min_numel: int):
        super().__init__()
        self.min_numel = min_numel
        self.peak = 0
        self._alive: list[weakref.ref] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:  # new storage only: views and in-place results allocate nothing
            if (
                isinstance(t, torch.Tensor)
                and t.numel() >= self.min_numel
                and t.untyped_storage().data_ptr() not in inputs
            ):
                self._alive.append(weakref.ref(t))
        live = [t for t in (ref() for ref in self._alive) if t is not None]
        self._alive = [weakref.ref(t) for t in live]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in live}
        self.peak = max(self.peak, sum(storages.values()))
        return out
