"""One run per save_dir: a live run's lock is an error naming its host and pid, a dead run's lock is
taken over with a message, and the lock is gone when a run ends."""

import json
import os
import socket
import subprocess
import sys

import pytest

from megasci.training.lock import LOCK_NAME, SaveDirLock, SaveDirLocked


def _write_lock(save_dir, **holder):
    os.makedirs(save_dir, exist_ok=True)
    with open(os.path.join(save_dir, LOCK_NAME), "w") as f:
        json.dump({"host": socket.gethostname(), "since": "2026-01-01T00:00:00", **holder}, f)


def test_a_live_run_holds_the_save_dir(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, pid=other.pid)
        with pytest.raises(
            SaveDirLocked,
            match=rf"in use by another run: pid {other.pid} on this host "
            rf"\({socket.gethostname()}\).*{LOCK_NAME}",
        ):
            SaveDirLock(str(tmp_path)).acquire()
    finally:
        other.kill()
        other.wait()


def test_a_lock_from_another_host_is_an_error_naming_it(tmp_path):
    _write_lock(tmp_path, host="node-17", pid=4242)
    with pytest.raises(SaveDirLocked, match=r"host node-17, pid 4242.*If that run is no longer alive, delete"):
        SaveDirLock(str(tmp_path)).acquire()


def test_a_stale_lock_is_taken_over_and_released_at_the_end(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, pid=dead.pid)
    said = []
    lock = SaveDirLock(str(tmp_path))
    lock.acquire(log=said.append)
    assert len(said) == 1 and f"pid {dead.pid}, no longer running" in said[0]
    with open(tmp_path / LOCK_NAME) as f:
        assert json.load(f)["pid"] == os.getpid()
    with pytest.raises(SaveDirLocked, match=f"pid {os.getpid()}"):  # a second run in this very process
        SaveDirLock(str(tmp_path)).acquire()
    lock.release()
    assert not os.path.exists(tmp_path / LOCK_NAME)


def test_a_reused_pid_is_not_the_lock_owner(tmp_path):
    """The pid is alive, but its process started after the lock was written: a different process."""
    _write_lock(tmp_path, pid=os.getpid(), process_start=1)
    said = []
    SaveDirLock(str(tmp_path)).acquire(log=said.append)
    assert "no longer running" in said[0]
