"""The guard around torch's JIT extension loader (robust_rlhf/runtime/jit_build_lock.py), with torch's real
FileBaton and a real SIGKILL: a live holder is waited for and its lock left alone; a killed one's lock is
removed, so the next loader does not wait forever."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

from torch.utils.file_baton import FileBaton

from robust_rlhf.runtime.jit_build_lock import build_guard, flock_path

# Holds the guard and torch's build lock, as a loader does during `load_inline`, until it is killed.
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from torch.utils.file_baton import FileBaton
    from robust_rlhf.runtime.jit_build_lock import build_guard
    directory = Path(sys.argv[1])
    with build_guard(directory):
        directory.mkdir(exist_ok=True)
        assert FileBaton(str(directory / "lock")).try_acquire()
        print("held", flush=True)
        time.sleep(600)
""")


@contextlib.contextmanager
def holding_the_build_lock(directory: Path) -> Iterator[subprocess.Popen]:
    """A subprocess that holds `directory`'s guard and torch's lock in it (yielded once it does); killed on exit
    if the test has not killed it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()


def test_a_live_holder_is_waited_for_and_a_killed_ones_lock_is_removed(tmp_path):
    directory = tmp_path / "some_op"
    with holding_the_build_lock(directory) as holder:
        entered = threading.Event()
        lock_seen_inside: list[bool] = []

        def load():
            with build_guard(directory):
                lock_seen_inside.append((directory / "lock").exists())
                entered.set()

        waiter = threading.Thread(target=load, daemon=True)
        waiter.start()
        # While the holder lives (a build under way), the waiter waits, and torch's lock stays.
        assert not entered.wait(1.0)
        assert (directory / "lock").exists()

        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        # Killed mid-load, it left torch's lock; the flock went with it, and the waiter removes the lock.
        assert entered.wait(30), "the guard still waits after its holder was killed"
        waiter.join(timeout=30)
    assert lock_seen_inside == [False]
    baton = FileBaton(str(directory / "lock"))
    assert baton.try_acquire()  # torch's own loader would now build instead of waiting forever
    baton.release()
    assert flock_path(directory) == tmp_path / ".some_op.robust_rlhf.flock" and flock_path(directory).exists()
