import os
import subprocess
import sys

from robust_rlhf.runtime.threads import CHOSEN, SPIN_COUNT, physical_cores, thread_environment


def test_threads_follow_the_cpus_given_and_idle_threads_spin_briefly():
    assert thread_environment({}, 3) == {
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
        CHOSEN: "3",
        "GOMP_SPINCOUNT": SPIN_COUNT,
    }


def test_ranks_on_one_node_share_its_cores():
    """DeepSpeed's launch.py sets LOCAL_SIZE, torchrun LOCAL_WORLD_SIZE: 2 ranks on 8 cores get 4 threads
    each, 3 ranks 2 (rounded down), and a rank never gets fewer than 1."""
    assert thread_environment({"LOCAL_SIZE": "2"}, 8)["OMP_NUM_THREADS"] == "4"
    assert thread_environment({"LOCAL_WORLD_SIZE": "3"}, 8)["MKL_NUM_THREADS"] == "2"
    assert thread_environment({"LOCAL_SIZE": "4"}, 2)["OMP_NUM_THREADS"] == "1"
    assert thread_environment({"LOCAL_SIZE": "", "LOCAL_WORLD_SIZE": "0"}, 2)["OMP_NUM_THREADS"] == "2"


def test_a_rank_chooses_again_what_its_parent_stage_chose_but_keeps_what_the_user_set():
    """The stage process sets OMP_NUM_THREADS before it relaunches itself under DeepSpeed; its ranks inherit
    that count (marked by CHOSEN) and must take their share, while a user's count is kept."""
    parent = {"LOCAL_SIZE": "2"} | thread_environment({}, 8)
    assert thread_environment(parent, 8) == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", CHOSEN: "4"}
    assert thread_environment({**parent, "OMP_NUM_THREADS": "3"}, 8) == {"MKL_NUM_THREADS": "3"}
    assert thread_environment(thread_environment({}, 8), 8) == {}  # applied twice: nothing left to set


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


def fake_topology(root, siblings: dict[int, str]):
    """A sysfs cpu tree with each CPU's thread_siblings_list."""
    for cpu, listed in siblings.items():
        (root / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (root / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(listed + "\n")
    return root


def test_hyperthreads_count_once_per_physical_core(tmp_path):
    """4 cores x 2 threads, Linux's numbering (CPU n and n + 4 share a core): all 8 CPUs are 4 cores, CPUs
    0 and 4 (one core's two threads) are 1, CPUs 0-3 (one thread of each core) are 4."""
    root = fake_topology(tmp_path, {cpu: f"{cpu % 4},{cpu % 4 + 4}" for cpu in range(8)})
    assert physical_cores(range(8), root) == 4
    assert physical_cores({0, 4}, root) == 1
    assert physical_cores(range(4), root) == 4


def test_an_unreadable_topology_counts_logical_cpus(tmp_path):
    assert physical_cores({0, 1, 2}, tmp_path / "absent") == 3
    root = fake_topology(tmp_path / "partial", {0: "0-1"})  # CPU 1's topology missing
    assert physical_cores({0, 1}, root) == 2


def test_the_hosts_topology_gives_between_one_thread_and_one_per_cpu():
    cpus = os.sched_getaffinity(0)
    assert 1 <= physical_cores(cpus) <= len(cpus)
