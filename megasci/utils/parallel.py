"""Ordered parallel map with a bounded number of tasks in flight.

`Pool.imap` reads its whole input eagerly on a feeder thread, which for a 500 GB corpus means
reading it all into memory; here at most `in_flight` items are pending at any time.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def bounded_imap(
    pool, fn: Callable[[Item], Result], items: Iterable[Item], in_flight: int
) -> Iterator[tuple[Item, Result]]:
    """Yield (item, fn(item)) in input order; with `pool` None, run in this process."""
    if pool is None:
        for item in items:
            yield item, fn(item)
        return
    window: collections.deque = collections.deque()
    for item in items:
        window.append((item, pool.apply_async(fn, (item,))))
        if len(window) >= in_flight:
            done, pending = window.popleft()
            yield done, pending.get()
    while window:
        done, pending = window.popleft()
        yield done, pending.get()
