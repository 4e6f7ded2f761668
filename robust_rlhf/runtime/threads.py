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
from collections.abc import Mapping

SPIN_COUNT = "1000"  # libgomp's GOMP_SPINCOUNT: spins before an idle thread sleeps (measured above)


def thread_environment(environ: Mapping[str, str], cpus: int) -> dict[str, str]:
    """The variables to add to `environ`: one intra-op thread per CPU the process may run on
    (`OMP_NUM_THREADS`, `MKL_NUM_THREADS`; not the machine's count, which a container or `taskset`
    narrows) and the short spin (`GOMP_SPINCOUNT`). A variable already set is the user's choice and
    is left out, as is the spin count when the user chose a wait policy (`OMP_WAIT_POLICY`). A thread
    count the user set for one of the two is given to the other too: torch takes MKL_NUM_THREADS over
    OMP_NUM_THREADS, so OMP_NUM_THREADS=1 alone would otherwise run `cpus` threads."""
    threads = environ.get("OMP_NUM_THREADS") or environ.get("MKL_NUM_THREADS") or str(cpus)
    wanted = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if "OMP_WAIT_POLICY" not in environ:
        wanted["GOMP_SPINCOUNT"] = SPIN_COUNT
    return {name: value for name, value in wanted.items() if name not in environ}


def configure_threads() -> None:
    """Apply `thread_environment` to this process (and so to the processes it starts); a no-op for
    what torch reads once if torch is already imported, so call it first."""
    os.environ.update(thread_environment(os.environ, len(os.sched_getaffinity(0))))
