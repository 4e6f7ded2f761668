"""bench/table.py: target verdicts and the rendered table."""

from bench.table import Row, meets, render


def test_meets_reads_the_direction_and_bound_of_the_target():
    assert meets(2.5, ">= 2x") == "yes"
    assert meets(1.9, ">= 2x") == "NO"
    assert meets(1.05, "<= 1.1x") == "yes"
    assert meets(1.2, "<= 1.1x") == "NO"
    assert meets(None, ">= 2x") == "" and meets(3.0, "") == ""


def test_render_aligns_columns_and_numbers_the_notes():
    text = render(
        [
            Row("ppo", "1.0", "0.5", 2.0, ">= 2x", note="PPO has a critic"),
            Row("brme k=5", "0.2 s", "0.2 s", 1.0, "<= 1.1x"),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split(" | ")[0].strip() == "benchmark"
    assert set(lines[1]) <= {"-", "+"}
    assert "ppo [1]" in lines[2] and "2.00x" in lines[2] and lines[2].endswith("yes")
    assert lines[3].endswith("yes")
    assert lines[-1] == "[1] PPO has a critic"
    # every table line has its column separators at the same offsets
    offsets = {tuple(i for i, c in enumerate(line) if c == "|") for line in (lines[0], lines[2])}
    assert len(offsets) == 1
