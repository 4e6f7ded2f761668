import os
import subprocess
import sys

from robust_rlhf.runtime.threads import SPIN_COUNT, thread_environment


def test_threads_follow_the_cpus_given_and_idle_threads_spin_briefly():
    assert thread_environment({}, 3) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "GOMP_SPINCOUNT": SPIN_COUNT}


def test_what_the_user_set_is_kept():
    assert thread_environment({"OMP_NUM_THREADS": "1", "GOMP_SPINCOUNT": "5"}, 2) == {"MKL_NUM_THREADS": "1"}
    assert thread_environment({"MKL_NUM_THREADS": "3"}, 2)["OMP_NUM_THREADS"] == "3"
    assert "GOMP_SPINCOUNT" not in thread_environment({"OMP_WAIT_POLICY": "ACTIVE"}, 2)


def test_a_stage_process_runs_torch_with_one_thread_per_cpu_of_its_affinity():
    """`import stages` sets the variables before torch starts: under `taskset` to one CPU torch has one
    intra-op thread (on any machine), and GOMP_SPINCOUNT reaches the process."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")}
    code = "import stages, os, torch; print(torch.get_num_threads(), os.environ['GOMP_SPINCOUNT'])"
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", SPIN_COUNT]


def test_omp_num_threads_alone_sets_torchs_threads():
    """torch takes MKL_NUM_THREADS over OMP_NUM_THREADS: the suite's OMP_NUM_THREADS=1 must reach both."""
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_NUM_THREADS", "GOMP_SPINCOUNT")}
    env["OMP_NUM_THREADS"] = "1"
    code = "import stages, torch; print(torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1"]
