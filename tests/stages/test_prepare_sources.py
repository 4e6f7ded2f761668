"""The prepare stage on real preference layouts: local files and a dataset saved to disk (the hub
path, `datasets.load_from_disk`), with bad rows counted and kept, and a clear failure above the
reject limit."""

import json

import pytest

from robust_rlhf.runtime.atomic import read_jsonl
from tests.conftest import run_stage, run_stage_ok, tiny_params, write_params

TOPICS = ["the park", "the museum", "the train", "the cafe", "the beach", "the library", "the market", "the hotel"]


def good_rows(count):
    return [
        {
            "prompt": f"Review {TOPICS[i % len(TOPICS)]} (visit {i}).",
            "chosen": f"Lovely visit number {i}.",
            "rejected": f"Dull visit number {i}.",
        }
        for i in range(count)
    ]


def source_params(tmp_path, source, **overrides):
    params = tiny_params(
        **{
            "prepare.task": "preference_data",
            "prepare.source": source,
            "prepare.num_train_pairs": 100,
            "prepare.num_val_pairs": 3,
            "prepare.num_test_pairs": 3,
            "prepare.num_ppo_prompts": 4,
            "prepare.num_eval_prompts": 2,
            **overrides,
        }
    )
    return write_params(tmp_path / "params.yaml", params)


def prepare(tmp_path, params, ok=True):
    runner = run_stage_ok if ok else run_stage
    return runner(
        "prepare", params, data=tmp_path / "data", policy=tmp_path / "policy", metrics=tmp_path / "prepare.json"
    )


def test_files_source_keeps_good_rows_and_counts_every_reject(tmp_path):
    rows = good_rows(20)
    bad = [
        {"prompt": "Review the zoo.", "chosen": "Same.", "rejected": "Same."},
        rows[0],
        {"prompt": "x", "chosen": "y"},
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows + bad))
    result = prepare(
        tmp_path, source_params(tmp_path, {"kind": "files", "files": [str(path)], "max_reject_fraction": 0.2})
    )
    # a file outside data_sources/ is no DVC dep of prepare: the stage says so
    assert f"{path} is not under data_sources/" in result.stderr
    metrics = json.loads((tmp_path / "prepare.json").read_text())
    assert metrics["rows"]["read"] == 23
    assert metrics["rejects"] == {"total": 3, "chosen_equals_rejected": 1, "duplicate_pair": 1, "missing_field": 1}
    rejects = read_jsonl(tmp_path / "data/rejects.jsonl")
    assert [(r["row"], r["reason"]) for r in rejects] == [
        (21, "chosen_equals_rejected"),
        (22, "duplicate_pair"),
        (23, "missing_field"),
    ]
    splits = {s: read_jsonl(tmp_path / f"data/prefs_{s}.jsonl") for s in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == 20 and len(splits["val"]) == 3 and len(splits["test"]) == 3
    assert {row["prompt"] for row in read_jsonl(tmp_path / "data/eval_prompts.jsonl")} <= {
        row["prompt"] for row in splits["test"]
    }


def test_too_many_rejects_fail_naming_the_file_reasons_rows_and_where_the_rejects_are(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in good_rows(4) + [{"prompt": "p", "chosen": ""}] * 4))
    result = prepare(tmp_path, source_params(tmp_path, {"kind": "files", "files": [str(path)]}), ok=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{path}: 4 of 8 rows rejected" in result.stderr and "missing_field x4" in result.stderr
    assert (
        "first rejected: row 5 field 'rejected': missing_field (no value for column 'rejected'); row 6 field "
        "'rejected': missing_field"
    ) in result.stderr
    assert not (tmp_path / "data").exists()  # nothing half-written
    # The rejects outlive the failure, outside data/ (which DVC deletes before it runs the stage).
    kept = tmp_path / ".rejects/prepare/rejects.jsonl"
    assert f"All 4 rejects (row, field, reason, raw) are in {kept}" in result.stderr
    assert [(r["row"], r["field"], r["reason"]) for r in read_jsonl(kept)] == [
        (row, "rejected", "missing_field") for row in (5, 6, 7, 8)
    ]


def test_too_few_valid_pairs_for_every_split_fail_keeping_the_rejects(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in good_rows(3) + [{"prompt": "p", "chosen": "a"}]))
    result = prepare(
        tmp_path, source_params(tmp_path, {"kind": "files", "files": [str(path)], "max_reject_fraction": 0.5}), ok=False
    )
    kept = tmp_path / ".rejects/prepare/rejects.jsonl"
    assert (
        result.returncode == 2
        and "3 valid pairs (of 4 rows) leave no pairs for the train, test split(s)" in result.stderr
    )
    assert f"The rejects (1) are in {kept}" in result.stderr
    assert [(r["row"], r["field"], r["reason"]) for r in read_jsonl(kept)] == [(4, "rejected", "missing_field")]


def test_every_row_read_is_used_rejected_or_counted_unused(tmp_path):
    rows = [row | {"id": i} for i, row in enumerate(good_rows(100))]  # "id" is no mapped column
    bad = [{"prompt": "Review the zoo.", "chosen": "Same.", "rejected": "Same."}, {"prompt": "x", "chosen": "y"}]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows + bad))
    stale = tmp_path / ".rejects/prepare/rejects.jsonl"  # what an earlier failed run left
    stale.parent.mkdir(parents=True)
    stale.write_text('{"row": 1}\n')
    result = prepare(
        tmp_path,
        source_params(
            tmp_path,
            {"kind": "files", "files": [str(path)]},
            **{"prepare.num_train_pairs": 48, "prepare.num_val_pairs": 16, "prepare.num_test_pairs": 16},
        ),
    )
    metrics = json.loads((tmp_path / "prepare.json").read_text())
    rows_metrics = metrics["rows"]
    assert (rows_metrics["train"], rows_metrics["val"], rows_metrics["test"]) == (48, 16, 16)
    assert rows_metrics["unused_over_cap"] == 20 and metrics["rejects"]["total"] == 2
    assert (
        rows_metrics["read"]
        == 102
        == (
            rows_metrics["train"]
            + rows_metrics["val"]
            + rows_metrics["test"]
            + rows_metrics["unused_over_cap"]
            + metrics["rejects"]["total"]
        )
    )
    assert "20 of 100 valid pairs are not used: the splits are full" in result.stderr
    assert metrics["ignored_columns"] == 1 and "column(s) ['id'] are not mapped" in result.stderr
    assert not stale.exists()  # this run's rejects are in data/rejects.jsonl; the stale copy is gone


def test_unknown_column_in_the_mapping_is_an_error_naming_it(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text("question,chosen,rejected\nq,a,b\n")
    result = prepare(tmp_path, source_params(tmp_path, {"kind": "files", "files": [str(path)]}), ok=False)
    assert result.returncode == 2 and "names ['prompt'], which the data does not have" in result.stderr


def test_hub_source_reads_hh_conversations_saved_to_disk(tmp_path):
    import datasets

    rows = [
        {
            "chosen": f"\n\nHuman: How was {t}?\n\nAssistant: Lovely, truly.",
            "rejected": f"\n\nHuman: How was {t}?\n\nAssistant: Dull.",
        }
        for t in TOPICS
    ]
    rows.append({"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Bye?\n\nAssistant: No."})
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "hh"))
    params = source_params(
        tmp_path,
        {
            "kind": "hub",
            "name": str(tmp_path / "hh"),
            "split": "train",
            "layout": "conversation_pair",
            "max_reject_fraction": 0.2,
        },
        **{"prepare.num_val_pairs": 2, "prepare.num_test_pairs": 2},
    )
    prepare(tmp_path, params)
    pairs = [row for s in ("train", "val", "test") for row in read_jsonl(tmp_path / f"data/prefs_{s}.jsonl")]
    assert len(pairs) == len(TOPICS) and all(p["prompt"].endswith("Assistant:") for p in pairs)
    assert {p["rejected"] for p in pairs} == {"Dull."}
    (reject,) = read_jsonl(tmp_path / "data/rejects.jsonl")
    assert (reject["row"], reject["reason"]) == (len(rows), "prompt_prefix_mismatch")


@pytest.mark.parametrize(
    "source, key", [({"kind": "hub"}, "prepare.source.name"), ({"kind": "files"}, "prepare.source.files")]
)
def test_a_source_without_a_name_is_refused_before_any_work(tmp_path, source, key):
    result = prepare(tmp_path, source_params(tmp_path, source), ok=False)
    assert result.returncode == 2 and key in result.stderr


def test_files_outside_the_dvc_sources_folder_are_named(tmp_path, monkeypatch):
    from robust_rlhf.data.run import files_outside

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data_sources").mkdir()
    assert files_outside(
        [
            "data_sources/a.jsonl",
            "./data_sources/sub/b.csv",
            "other/c.json",
            "/abs/d.parquet",
            "data_sources/../e.jsonl",
        ],
        "data_sources",
    ) == ["other/c.json", "/abs/d.parquet", "data_sources/../e.jsonl"]


def test_a_list_of_sources_of_different_layouts_is_pooled_before_the_split(tmp_path):
    # As the paper profile pools HH-RLHF (conversation_pair) and UltraFeedback (messages).
    columns = tmp_path / "columns.jsonl"
    columns.write_text("".join(json.dumps(row) + "\n" for row in good_rows(8)))
    turns = [
        {
            "chosen": [{"role": "user", "content": f"Rate stop {i}."}, {"role": "assistant", "content": "Nice."}],
            "rejected": [{"role": "user", "content": f"Rate stop {i}."}, {"role": "assistant", "content": "Bad."}],
        }
        for i in range(8)
    ]
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps(row) + "\n" for row in turns))
    sources = [
        {"kind": "files", "files": [str(columns)]},
        {"kind": "files", "files": [str(chat)], "layout": "messages"},
    ]
    prepare(tmp_path, source_params(tmp_path, sources))
    metrics = json.loads((tmp_path / "prepare.json").read_text())
    assert metrics["rows"]["read"] == 16 and metrics["rejects"] == {"total": 0}
    pairs = [pair for split in ("train", "val", "test") for pair in read_jsonl(tmp_path / f"data/prefs_{split}.jsonl")]
    assert len(pairs) == 16 and {pair["source"] for pair in pairs} == {str(columns), str(chat)}
