"""CPU threads for a machine shared with other work, set in the environment before torch loads
(OpenMP reads it once, when torch's libgomp starts).

torch's OpenMP threads spin between parallel regions (libgomp's default waits ~300k spins before
sleeping). On 2 cores next to one CPU-bound process, a spinning thread holds a core the other
thread of its own team needs, and every op waits for the scheduler: prepare's sampling took 27x its
idle time next to one `while True: pass` (6.1 s alone, 164 s contested), against 2.1x with a spin
count of 1,000 (6.8 s alone, 12.6 s contested; a fair share of the 2 cores is 2x), and 1.8x with
passive waiting, which cost 80% when idle (11.0 s). docs/performance.md has the stage-level row.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

SPIN_COUNT = "1000"  # libgomp's GOMP_SPINCOUNT: spins before an idle thread sleeps (measured above)
# The count `configure_threads` chose, exported beside it: a child process (a launcher's rank) inherits
# OMP_NUM_THREADS from its parent stage and must tell that from a count the user set, or it would keep
# the parent's whole-node count.
CHOSEN = "ROBUST_RLHF_THREADS"
# Processes on this node: torchrun sets LOCAL_WORLD_SIZE; DeepSpeed's launch.py sets LOCAL_SIZE (and
# robust_rlhf/runtime/launcher.py sets it for the CPU accelerator).
LOCAL_SIZE_KEYS = ("LOCAL_WORLD_SIZE", "LOCAL_SIZE")
SYSFS_CPU = Path("/sys/devices/system/cpu")


def local_world_size(environ: Mapping[str, str]) -> int:
    """How many ranks of a launched job share this node, from the launcher's variables; 1 unlaunched."""
    for name in LOCAL_SIZE_KEYS:
        if environ.get(name, "").isdigit() and int(environ[name]) > 0:
            return int(environ[name])
    return 1


def thread_environment(environ: Mapping[str, str], cpus: int) -> dict[str, str]:
    """The variables to set in `environ`: one intra-op thread per core the process may run on (`cpus`:
    the affinity's physical cores, not the machine's CPUs, which a container or `taskset` narrows), divided
    among the ranks a launcher runs on this node (`local_world_size`; at least 1 each, so 2 ranks on 2
    cores do not run 4 threads), as `OMP_NUM_THREADS` and `MKL_NUM_THREADS`, and the short spin
    (`GOMP_SPINCOUNT`).

    A variable already set is the user's choice and is left out, as is the spin count when the user chose
    a wait policy (`OMP_WAIT_POLICY`); a thread count equal to `CHOSEN` is not the user's but a parent's
    `configure_threads`', and is chosen again. A thread count the user set for one of the two is given to
    the other too: torch takes MKL_NUM_THREADS over OMP_NUM_THREADS, so OMP_NUM_THREADS=1 alone would
    otherwise run `cpus` threads."""
    user = {name: environ[name] for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if name in environ}
    user = {name: value for name, value in user.items() if value != environ.get(CHOSEN)}
    threads = user.get("OMP_NUM_THREADS") or user.get("MKL_NUM_THREADS")
    wanted = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if threads is None:
        threads = str(max(1, cpus // local_world_size(environ)))
        wanted = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, CHOSEN: threads}
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        wanted["GOMP_SPINCOUNT"] = SPIN_COUNT
    return {name: value for name, value in wanted.items() if name not in user and environ.get(name) != value}


def physical_cores(cpus: Iterable[int], sysfs: Path = SYSFS_CPU) -> int:
    """How many physical cores the logical `cpus` sit on: the distinct `thread_siblings_list`s under
    `sysfs` (the CPUs of one core; unlike `core_id`, unique without the package and die ids). Hyperthreads
    of one core share its vector units, so a second matmul thread there adds little but contention; MKL's
    own default is one thread per physical core too. The logical count when the topology cannot be read
    (no /sys, a restricted container)."""
    cpus = list(cpus)
    try:
        cores = {(sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip() for cpu in cpus}
    except OSError:
        return len(cpus)
    return len(cores) or len(cpus)


def configure_threads() -> None:
    """Apply `thread_environment` to this process (and so to the processes it starts); a no-op for
    what torch reads once if torch is already imported, so call it first."""
    os.environ.update(thread_environment(os.environ, physical_cores(os.sched_getaffinity(0))))
