"""``uninterrupted``: SIGINT and SIGTERM that arrive inside the block are acted on after it, whole."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from saecircuits.core.files import uninterrupted


def test_ctrl_c_inside_the_block_is_raised_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler would have run here
            done.append("all of the block")
    assert done == ["all of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_sigterm_inside_the_block_reaches_the_installed_handler_after_it():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(("handler", s)))
    try:
        with uninterrupted():
            threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM)).start()  # from another thread
            time.sleep(0.1)
            seen.append("block done")
        assert seen == ["block done", ("handler", signal.SIGTERM)]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_no_signal_no_effect():
    with uninterrupted():
        x = 1
    assert x == 1 and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_moved_paths_follow_a_staged_folder_to_its_target(tmp_path):
    from pathlib import Path

    from saecircuits.core.files import moved_paths

    staged, target = tmp_path / ".out-x1", tmp_path / "out"
    written = {"a": staged / "a.json", "b": [str(staged / "f" / "b.png")], "other": str(tmp_path / "elsewhere"), "n": 3}
    assert moved_paths(written, staged, target) == {"a": target / "a.json", "b": [str(target / "f" / "b.png")],
                                                    "other": str(tmp_path / "elsewhere"), "n": 3}
    assert isinstance(moved_paths(written, staged, target)["a"], Path)
