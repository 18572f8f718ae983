"""training/stop.py: SIGTERM becomes a stop request while the trainer runs, and only then."""

import os
import signal
import threading

from megasci.training.stop import StopRequest


def test_sigterm_is_requested_inside_and_restored_outside():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.agreed("cpu", 1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.agreed("cpu", 1)
    assert signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_nothing_is_installed():
    seen = {}

    def run():
        with StopRequest() as stop:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["requested"] = stop.requested

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == {"handler": before, "requested": False}
