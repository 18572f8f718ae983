"""One run per save_dir: `<save_dir>/run.lock` holds the host and pid of the run writing there.

Two runs in one save_dir would interleave checkpoints, `latest` and keep_last pruning, each
deleting the other's work. Rank 0 creates the lock (O_EXCL) at start and removes it at exit. A lock
left by a run that died (same host, its pid gone, or reused by a process that started later) is
stale and taken over with a message; a live one, or one from another host (whose pid cannot be
checked from here), is an error naming the holder and the file to delete if that run is gone.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time

import torch.distributed as dist

LOCK_NAME = "run.lock"


class SaveDirLocked(RuntimeError):
    """Another run holds the save directory."""


def _process_start(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot (Linux), to tell a reused pid from its first owner."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    now = _process_start(pid)
    return started is None or now is None or now == started


class SaveDirLock:
    """`acquire()` takes `<save_dir>/run.lock` or raises SaveDirLocked; `release()` removes it if it is ours."""

    def __init__(self, save_dir: str):
        self.path = os.path.join(save_dir, LOCK_NAME)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid())}
        self.held = False

    def acquire(self, log=print) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(log)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({**self.owner, "since": datetime.datetime.now().isoformat(timespec="seconds")}, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return
        raise SaveDirLocked(f"{self.path}: could not take the lock (another run keeps taking it)")

    def _holder(self) -> dict | None:
        """The lock's contents; None if it vanished. A lock still empty a few seconds after its creation
        (a run killed between creating and writing it) reads as a dead holder."""
        for _ in range(20):
            try:
                with open(self.path, encoding="utf-8") as f:
                    text = f.read()
                mtime = os.path.getmtime(self.path)
            except FileNotFoundError:
                return None
            try:
                holder = json.loads(text)
                if isinstance(holder, dict) and "pid" in holder:
                    return holder
            except json.JSONDecodeError:
                pass
            if time.time() - mtime > 5:
                return {"host": self.owner["host"], "pid": -1, "unreadable": True}
            time.sleep(0.25)
        return {"host": self.owner["host"], "pid": -1, "unreadable": True}

    def _take_over_if_stale(self, log) -> None:
        holder = self._holder()
        if holder is None:
            return
        same_host = holder.get("host") == self.owner["host"]
        if not same_host:
            raise SaveDirLocked(
                f"{os.path.dirname(self.path)} is in use by another run: host {holder.get('host')}, pid "
                f"{holder.get('pid')}, since {holder.get('since', '?')} ({self.path}); two runs in one save_dir "
                f"would overwrite each other's checkpoints. If that run is no longer alive, delete {self.path}"
            )
        pid = int(holder.get("pid", -1))
        if pid > 0 and _alive(pid, holder.get("process_start")):
            raise SaveDirLocked(
                f"{os.path.dirname(self.path)} is in use by another run: pid {pid} on this host "
                f"({holder['host']}), since {holder.get('since', '?')} ({self.path}); two runs in one save_dir "
                f"would overwrite each other's checkpoints"
            )
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)  # of two runs taking over at once, one rename wins
        except FileNotFoundError:
            return
        os.remove(aside)
        what = "an unreadable lock" if holder.get("unreadable") else f"pid {pid}, no longer running"
        log(f"taking over the stale lock {self.path} ({what}, since {holder.get('since', '?')})")

    def release(self) -> None:
        """Removes the lock if this process still holds it."""
        if not self.held:
            return
        self.held = False
        try:
            with open(self.path, encoding="utf-8") as f:
                holder = json.load(f)
            if holder.get("pid") == self.owner["pid"] and holder.get("host") == self.owner["host"]:
                os.remove(self.path)
        except (OSError, ValueError):
            pass


def lock_for_run(save_dir: str, rank: int, world_size: int, log=print) -> SaveDirLock | None:
    """Collective: rank 0 takes the lock; every rank raises SaveDirLocked if it could not. Returns
    rank 0's lock (None elsewhere) for `release()` at exit."""
    lock, error = (SaveDirLock(save_dir), None) if rank == 0 else (None, None)
    if lock is not None:
        try:
            lock.acquire(log)
        except SaveDirLocked as e:
            error = str(e)
    if world_size > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise SaveDirLocked(error)
    return lock
