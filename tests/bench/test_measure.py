"""bench/measure.py: each child's own exit code, wall time and peak RSS."""

import sys

from bench.measure import run_measured


def test_peak_rss_is_the_childs_own(tmp_path):
    big = run_measured(
        [sys.executable, "-c", "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096])"], cwd=tmp_path
    )
    small = run_measured([sys.executable, "-c", "pass"], cwd=tmp_path)
    assert big.returncode == 0 and big.peak_rss_mb > 300
    assert small.peak_rss_mb < 100  # not the maximum over every child so far (RUSAGE_CHILDREN would say > 300)


def test_a_large_parent_does_not_inflate_a_small_childs_peak(tmp_path):
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"1" * len(ballast[::4096])  # touch the pages: this process's RSS is now > 400 MB
    assert run_measured([sys.executable, "-c", "pass"], cwd=tmp_path).peak_rss_mb < 100
    del ballast


def test_exit_code_and_output_tail(tmp_path):
    result = run_measured(
        [sys.executable, "-c", "print('hello'); raise SystemExit(3)"], cwd=tmp_path, log=tmp_path / "out.log"
    )
    assert result.returncode == 3 and result.output_tail.strip() == "hello" and result.wall_seconds > 0


def test_timeout_kills_the_child(tmp_path):
    result = run_measured([sys.executable, "-c", "import time; time.sleep(30)"], cwd=tmp_path, timeout=0.5)
    assert result.returncode != 0 and result.wall_seconds < 10
