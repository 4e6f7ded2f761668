import re
import subprocess
import sys
from pathlib import Path


def test_reduced_bench_prints_a_ratio(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "bench.zero3_generation", "--reduced"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=repo,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert re.search(r"tiny: 4 tokens, naive [\d.]+ s, gathered [\d.]+ s, naive/gathered [\d.]+x", result.stdout)
