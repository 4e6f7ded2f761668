import pytest

from robust_rlhf.runtime.atomic import atomic_directory, atomic_write_jsonl, atomic_write_text, read_jsonl


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out" / "file.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_jsonl_round_trip_keeps_unicode(tmp_path):
    rows = [{"prompt": "héllo", "n": 1}, {"prompt": "日本", "n": 2}]
    atomic_write_jsonl(tmp_path / "rows.jsonl", rows)
    assert read_jsonl(tmp_path / "rows.jsonl") == rows


def test_atomic_directory_keeps_the_old_output_when_the_writer_fails(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (target / "weights").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_killed_writers_temporaries_are_removed_by_the_next_writer(tmp_path):
    from robust_rlhf.runtime.atomic import atomic_directory

    out = tmp_path / "data"
    (tmp_path / ".data.abc123.tmp").mkdir()  # a folder write killed midway
    (tmp_path / ".data.abc123.tmp" / "half.jsonl").write_text("{")
    (tmp_path / ".data.old").mkdir()  # a swap killed midway
    (tmp_path / ".data.resume").mkdir()  # a resume folder is not a temporary
    (tmp_path / ".other.x.tmp").mkdir()  # another output's temporary is not ours
    with atomic_directory(out) as tmp:
        (tmp / "rows.jsonl").write_text("{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.resume", ".other.x.tmp", "data"]
