"""A lock around torch's JIT extension loader that a killed process cannot leave behind.

torch marks a JIT build (`torch.utils.cpp_extension.load`/`load_inline`) with a plain `lock` file in the
build folder, which only its creator removes. Every load takes it, also when the build is up to date (to
run ninja), so a stage killed in that second (SIGKILL by a user, a flow's timeout, a resume test) leaves
it behind, and every later process that loads the extension waits on it forever. Our processes load an
extension only under `build_guard`, an flock that the OS releases when its holder dies; so whoever holds
the flock and still finds torch's `lock` knows its creator is dead, and removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def flock_path(build_directory: Path) -> Path:
    """The flock file that guards `build_directory`: beside it, so that the build folder holds only torch's files."""
    return build_directory.parent / f".{build_directory.name}.robust_rlhf.flock"


@contextlib.contextmanager
def build_guard(build_directory: Path) -> Iterator[None]:
    """Hold the flock of `build_directory` (waiting while another live process builds or loads there), with any
    `lock` file of torch's removed: under the flock it can only be a dead process's."""
    build_directory.parent.mkdir(parents=True, exist_ok=True)
    with open(flock_path(build_directory), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = build_directory / "lock"
            if stale.exists():
                logger.warning("removing a JIT build lock left by a killed process: %s", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
