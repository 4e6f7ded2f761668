"""Every bad input of docs/data.md#rejects on small fixture files: a named reject with its row, or a clear
error naming the file. Real parsers, real files, the real `datasets` load path (from disk)."""

import csv
import json
import logging
import sys
from pathlib import Path

import pytest

from robust_rlhf.config import SourceParams
from robust_rlhf.data.sources import (
    RAW_LIMIT_CHARS,
    RAW_MAX_DEPTH,
    Mapping,
    SourceError,
    TokenBound,
    TooManyRejects,
    byte_symbols,
    check_columns,
    check_reject_fraction,
    dataset_rows,
    load_hub_rows,
    load_source,
    load_sources,
    map_rows,
    read_file_rows,
    split_conversation,
    token_bound,
    truncate_to_tokens,
)

GOOD = {"prompt": "Rate the park.", "chosen": "Lovely and calm.", "rejected": "Noisy."}


def write_jsonl(path, rows):
    path.write_bytes(b"".join((json.dumps(r).encode() if isinstance(r, dict) else r) + b"\n" for r in rows))
    return path


def mapped(path, mapping=None, **kwargs):
    return map_rows(str(path), read_file_rows(path), mapping or Mapping(), **kwargs)


def only_reject(result):
    assert len(result.rejects) == 1, result.rejects
    return result.rejects[0]


def where(reject):
    return reject["row"], reject["field"], reject["reason"]


def loaded(tokenizer, *paths, **source):
    """load_source on local files with the real (tiny) tokenizer, as the prepare stage calls it."""
    return load_source(SourceParams(kind="files", files=[str(path) for path in paths], **source), tokenizer)


def nested(depth, leaf="x"):
    """A list nested `depth` levels deep, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "row, reason, field",
    [
        ({"prompt": "p", "chosen": "a"}, "missing_field", "rejected"),
        ({"prompt": "p", "chosen": "a", "rejected": None}, "missing_field", "rejected"),
        ({"prompt": "p", "chosen": 3, "rejected": "b"}, "wrong_type", "chosen"),
        ({"prompt": "  \n", "chosen": "a", "rejected": "b"}, "empty_text", "prompt"),
        ({"prompt": "p", "chosen": "", "rejected": "b"}, "empty_text", "chosen"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "chosen_equals_rejected", "rejected"),
    ],
)
def test_bad_rows_are_rejected_with_row_and_reason(tmp_path, row, reason, field):
    result = mapped(write_jsonl(tmp_path / "prefs.jsonl", [GOOD, row]))
    rejected = only_reject(result)
    assert (rejected["row"], rejected["reason"], rejected["field"]) == (2, reason, field)
    assert rejected["source"].endswith("prefs.jsonl") and rejected["raw"] == row
    assert [pair["source_row"] for pair in result.pairs] == [1]
    assert result.rows_read == 2 and result.reject_counts() == {reason: 1}


def test_invalid_utf8_rejects_only_its_row(tmp_path):
    bad = b'{"prompt": "p", "chosen": "caf\xe9", "rejected": "b"}'  # latin-1 byte, not UTF-8
    result = mapped(write_jsonl(tmp_path / "prefs.jsonl", [GOOD, bad, GOOD | {"chosen": "Fine."}]))
    rejected = only_reject(result)
    assert (rejected["row"], rejected["reason"], rejected["field"]) == (2, "invalid_utf8", "chosen")
    assert rejected["raw"]["chosen"] == "caf\\xe9"  # kept, printable
    json.dumps(result.rejects)  # the reject is writable as JSON
    assert len(result.pairs) == 2


def test_duplicate_pair_is_rejected_the_second_time(tmp_path):
    result = mapped(write_jsonl(tmp_path / "prefs.jsonl", [GOOD, GOOD]))
    assert only_reject(result)["reason"] == "duplicate_pair" and len(result.pairs) == 1


def test_too_long_rejects_or_truncates_by_param(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD | {"chosen": "one two three four five six"}])
    words = lambda text: len(text.split())  # noqa: E731
    cut = lambda text, limit: " ".join(text.split()[:limit])  # noqa: E731
    rejected = only_reject(mapped(path, count_tokens=words, max_tokens=4))
    assert (rejected["reason"], rejected["field"]) == ("too_long", "chosen") and "6 tokens > limit 4" in rejected[
        "detail"
    ]
    kept = mapped(path, count_tokens=words, max_tokens=4, too_long="truncate", truncate=cut)
    assert not kept.rejects and kept.pairs[0]["chosen"] == "one two three four"


def test_malformed_jsonl_line_is_a_reject_but_a_file_of_none_is_an_error(tmp_path):
    result = mapped(write_jsonl(tmp_path / "prefs.jsonl", [GOOD, b"{not json", b"[1, 2]"]))
    assert [(r["row"], r["reason"]) for r in result.rejects] == [(2, "malformed_row"), (3, "malformed_row")]
    (tmp_path / "really.jsonl").write_text("prompt,chosen,rejected\np,a,b\n")
    with pytest.raises(SourceError, match=r"really.jsonl: not JSONL"):
        list(read_file_rows(tmp_path / "really.jsonl"))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", b"", "empty file"),
        ("blank.csv", b"\n\n", "empty file"),
        ("header_only.csv", b"prompt,chosen,rejected\n", "a header and no rows"),
        ("empty.json", b"[]", "empty file"),
        ("notjson.json", b"prompt,chosen\n", "not JSON"),
        ("notparquet.parquet", b"prompt,chosen,rejected\n", "not Parquet"),
        ("table.xlsx", b"x", "unknown file type"),
    ],
)
def test_whole_file_problems_name_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SourceError, match=message) as raised:
        list(read_file_rows(tmp_path / name))
    assert name in str(raised.value)


def test_a_mapped_column_the_data_lacks_is_an_error_naming_it():
    with pytest.raises(SourceError, match=r"names \['question'\].*columns: \['prompt', 'chosen', 'rejected'\]"):
        check_columns("prefs.csv", ["prompt", "chosen", "rejected"], Mapping(prompt="question"))


def test_csv_json_and_parquet_read_the_same_rows(tmp_path):
    import pyarrow
    import pyarrow.parquet

    rows = [GOOD, GOOD | {"chosen": 'Green, quiet, "lovely".'}]
    with open(tmp_path / "prefs.csv", "w", newline="") as handle:
        import csv

        writer = csv.DictWriter(handle, fieldnames=list(GOOD))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "prefs.json").write_text(json.dumps(rows))
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "prefs.parquet")
    for name in ("prefs.csv", "prefs.json", "prefs.parquet"):
        result = mapped(tmp_path / name)
        assert [{k: p[k] for k in GOOD} for p in result.pairs] == rows, name


def test_csv_row_with_extra_cells_is_rejected(tmp_path):
    (tmp_path / "prefs.csv").write_text("prompt,chosen,rejected\np,a,b\np,a,b,extra\n")
    assert only_reject(mapped(tmp_path / "prefs.csv"))["reason"] == "malformed_row"


HH_CHOSEN = "\n\nHuman: Is the park nice?\n\nAssistant: Yes, lovely and calm."
HH_REJECTED = "\n\nHuman: Is the park nice?\n\nAssistant: No."


def test_conversation_pair_splits_off_the_shared_prompt(tmp_path):
    assert split_conversation(HH_CHOSEN, HH_REJECTED) == (
        "\n\nHuman: Is the park nice?\n\nAssistant:",
        "Yes, lovely and calm.",
        "No.",
    )
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [
            {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
            {"chosen": HH_CHOSEN, "rejected": "\n\nHuman: Is the zoo nice?\n\nAssistant: No."},
        ],
    )
    result = mapped(path, Mapping(layout="conversation_pair", prompt=None))
    assert result.pairs[0]["prompt"].endswith("Assistant:") and result.pairs[0]["rejected"] == "No."
    assert (only_reject(result)["row"], only_reject(result)["reason"]) == (2, "prompt_prefix_mismatch")


def messages(*turns):
    return [{"role": role, "content": content} for role, content in turns]


def test_message_lists_share_the_prompt_and_end_with_the_assistant(tmp_path):
    user = ("user", "Is the park nice?")
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"chosen": messages(user, ("assistant", "Lovely.")), "rejected": messages(user, ("assistant", "No."))},
            {
                "chosen": messages(user, ("assistant", "Lovely.")),
                "rejected": messages(("user", "Zoo?"), ("assistant", "No.")),
            },
            {"chosen": messages(user, ("assistant", "Lovely.")), "rejected": "No."},
            {"chosen": messages(user, ("user", "Lovely.")), "rejected": messages(user, ("user", "No."))},
        ],
    )
    result = mapped(path, Mapping(layout="messages", prompt=None))
    assert {key: result.pairs[0][key] for key in ("prompt", "chosen", "rejected")} == {
        "prompt": "Is the park nice?",
        "chosen": "Lovely.",
        "rejected": "No.",
    }
    assert [(r["row"], r["reason"]) for r in result.rejects] == [
        (2, "prompt_prefix_mismatch"),
        (3, "wrong_type"),
        (4, "wrong_type"),
    ]


def test_reject_fraction_above_the_limit_fails_naming_source_reasons_and_first_rows(tmp_path):
    result = mapped(write_jsonl(tmp_path / "prefs.jsonl", [GOOD, GOOD, {"prompt": "p"}]))
    check_reject_fraction(result, "prefs.jsonl", 0.7)
    with pytest.raises(
        TooManyRejects, match=r"prefs.jsonl: 2 of 3 rows rejected .*duplicate_pair x1, missing_field x1"
    ) as raised:
        check_reject_fraction(result, "prefs.jsonl", 0.2)
    assert (
        "first rejected: row 2 the whole row: duplicate_pair (the same (prompt, chosen, rejected) appeared "
        "before); row 3 field 'chosen': missing_field (no value for column 'chosen')"
    ) in str(raised.value)
    assert raised.value.rejects == result.rejects


def test_hub_path_loads_a_dataset_saved_to_disk(tmp_path):
    import datasets

    rows = [GOOD, GOOD | {"chosen": ""}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "ds"))
    description, dataset = load_hub_rows(str(tmp_path / "ds"), config=None, split="train", revision=None)
    check_columns(description, dataset.column_names, Mapping())
    result = map_rows(description, dataset_rows(dataset), Mapping())
    assert len(result.pairs) == 1 and only_reject(result)["reason"] == "empty_text"
    with pytest.raises(SourceError, match="no split 'test'"):
        load_hub_rows(str(tmp_path / "ds"), config=None, split="test", revision=None)


def test_hub_path_calls_load_dataset_and_names_the_dataset_when_it_fails(tmp_path, monkeypatch):
    # No hub here: datasets fails offline; the error names the dataset, config, split and revision.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(SourceError, match=r"hub dataset 'someorg/prefs' \(config None, split 'train', revision 'v1'\)"):
        load_hub_rows("someorg/prefs", config=None, split="train", revision="v1")


def test_split_pairs_keeps_each_prompt_in_one_split():
    from robust_rlhf.data.sources import split_pairs

    pairs = [{"prompt": f"p{i % 7}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(21)]
    splits = split_pairs(pairs, seed=0, sizes={"train": 100, "val": 3, "test": 3})
    prompts = {name: {pair["prompt"] for pair in rows} for name, rows in splits.items()}
    assert not (prompts["train"] & prompts["val"]) and not (prompts["train"] & prompts["test"])
    assert not (prompts["val"] & prompts["test"])
    assert sum(map(len, splits.values())) == 21 and len(splits["val"]) == 3 and len(splits["test"]) == 3
    assert split_pairs(pairs, seed=0, sizes={"train": 100, "val": 3, "test": 3}) == splits  # deterministic


# --- hostile input: every case ends in a named reject or a SourceError naming the file and row ---


def test_a_jsonl_line_nested_too_deeply_to_decode_is_a_malformed_row(tmp_path):
    line = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b', "chosen": "a", "rejected": "b"}'
    result = mapped(write_jsonl(tmp_path / "prefs.jsonl", [GOOD, line, GOOD | {"chosen": "Fine."}]))
    rejected = only_reject(result)
    assert where(rejected) == (2, None, "malformed_row") and "nested too deeply" in rejected["detail"]
    assert rejected["raw"] == line.decode()[:RAW_LIMIT_CHARS] and rejected["raw_chars"] == len(line)
    assert [pair["source_row"] for pair in result.pairs] == [1, 3]
    json.dumps(result.rejects)


def test_a_value_json_decodes_but_too_deep_to_copy_into_the_reject_is_elided(tmp_path):
    # Deep enough that copying it level by level overflows the stack, shallow enough that json decodes it.
    deep = nested(sys.getrecursionlimit() // 2)
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD | {"chosen": deep}])
    rejected = only_reject(mapped(path))
    assert where(rejected) == (1, "chosen", "wrong_type")
    kept = rejected["raw"]["chosen"]  # the row is level 0, its chosen list level 1
    for _ in range(RAW_MAX_DEPTH - 2):
        (kept,) = kept
    assert kept == [f"<list nested deeper than {RAW_MAX_DEPTH} levels>"]
    json.dumps(rejected)


def test_message_lists_too_deep_to_compare_are_a_malformed_row():
    # A dataset row (Parquet, the hub) is built in Python, so no decoder limits its depth.
    user = {"role": "user", "content": "Is the park nice?"}
    row = {
        "chosen": [user | {"meta": nested(20_000)}, {"role": "assistant", "content": "Yes."}],
        "rejected": [user | {"meta": nested(20_000)}, {"role": "assistant", "content": "No."}],
    }
    result = map_rows("rows", [(1, row)], Mapping(layout="messages", prompt=None))
    assert where(only_reject(result)) == (1, None, "malformed_row")
    json.dumps(result.rejects)


def test_a_json_file_nested_too_deeply_fails_naming_the_row(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "prefs.json").write_text(f'[{json.dumps(GOOD)}, {{"prompt": {deep}, "chosen": "a", "rejected": "b"}}]')
    with pytest.raises(SourceError, match=r"prefs.json: row 2 is nested too deeply"):
        list(read_file_rows(tmp_path / "prefs.json"))


def test_a_csv_field_over_the_csv_modules_limit_is_a_too_long_reject(tmp_path, tiny_tokenizer):
    limit = csv.field_size_limit()
    long_text = "lovely " * 30_000  # 210,000 characters; csv refuses fields over 131,072 by default
    with open(tmp_path / "prefs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(GOOD))
        writer.writeheader()
        writer.writerows([GOOD, GOOD | {"chosen": long_text}])
    result = loaded(tiny_tokenizer, tmp_path / "prefs.csv", max_text_tokens=64, max_reject_fraction=0.5)
    assert where(only_reject(result)) == (2, "chosen", "too_long") and len(result.pairs) == 1
    assert csv.field_size_limit() == limit  # the module-wide limit is left as it was


def test_an_escaped_lone_surrogate_is_invalid_utf8_before_the_tokenizer_sees_it(tmp_path, tiny_tokenizer):
    path = write_jsonl(
        tmp_path / "prefs.jsonl", [GOOD, GOOD | {"chosen": "Bad \ud800 text"}, GOOD | {"chosen": "A smile \U0001f600."}]
    )
    assert b"\\ud800" in path.read_bytes() and b"\\ud83d\\ude00" in path.read_bytes()  # escaped, as json writes them
    result = loaded(tiny_tokenizer, path, max_reject_fraction=0.5)
    rejected = only_reject(result)
    assert where(rejected) == (2, "chosen", "invalid_utf8") and rejected["raw"]["chosen"] == "Bad \\ud800 text"
    assert result.pairs[1]["chosen"] == "A smile \U0001f600."  # a proper surrogate pair is one valid character
    json.dumps(result.rejects)


@pytest.mark.parametrize("name", ["x.jsonl", "x.csv", "x.parquet"])
def test_a_folder_with_a_data_file_name_is_an_error_naming_it(tmp_path, name):
    (tmp_path / name).mkdir()
    with pytest.raises(SourceError, match=rf"{name}: a folder, not a \w+ file"):
        list(read_file_rows(tmp_path / name))


def test_a_hub_name_that_is_a_folder_but_no_saved_dataset_is_an_error_naming_it(tmp_path):
    (tmp_path / "prefs").mkdir()
    write_jsonl(tmp_path / "prefs" / "train.jsonl", [GOOD])
    with pytest.raises(SourceError, match=r"prefs: a local folder, but not a dataset saved with save_to_disk"):
        load_hub_rows(str(tmp_path / "prefs"), config=None, split="train", revision=None)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_line_separators_inside_json_strings_do_not_split_a_jsonl_row(tmp_path, separator):
    rows = [GOOD, GOOD | {"chosen": f"Two{separator}lines."}, GOOD | {"chosen": "After."}]
    # ensure_ascii=False writes the separator raw, as many writers do; \r\n line ends are read too.
    (tmp_path / "prefs.jsonl").write_bytes("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode())
    result = mapped(tmp_path / "prefs.jsonl")
    assert not result.rejects and [pair["source_row"] for pair in result.pairs] == [1, 2, 3]
    assert result.pairs[1]["chosen"] == f"Two{separator}lines." and result.pairs[2]["chosen"] == "After."


def test_line_separators_inside_csv_fields_do_not_split_a_csv_row(tmp_path):
    rows = [GOOD, GOOD | {"chosen": "Two\u2028lines\u0085here."}, GOOD | {"chosen": "After."}]
    with open(tmp_path / "prefs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(GOOD))
        writer.writeheader()
        writer.writerows(rows)
    result = mapped(tmp_path / "prefs.csv")
    assert not result.rejects and [pair["chosen"] for pair in result.pairs] == [row["chosen"] for row in rows]


class CountingTokenizer:
    """One token per word, recording the length of every text it was given (a stand-in for a
    tokenizer, to show which texts map_rows tokenises)."""

    def __init__(self):
        self.seen: list[int] = []

    def count(self, text):
        self.seen.append(len(text))
        return len(text.split())

    def truncate(self, text, limit):
        self.seen.append(len(text))
        return " ".join(text.split()[:limit])


def test_a_text_too_long_by_its_bytes_is_rejected_without_being_tokenised(tmp_path):
    huge = "lovely " * 500_000  # 3.5 MB
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, GOOD | {"chosen": huge}])
    tokens = CountingTokenizer()
    result = mapped(path, count_tokens=tokens.count, max_tokens=16, token_bound=TokenBound(8))
    rejected = only_reject(result)
    assert where(rejected) == (2, "chosen", "too_long")
    assert rejected["detail"].startswith(f"at least {len(huge) // 8} tokens ({len(huge)} UTF-8 bytes, at most 8")
    assert max(tokens.seen) <= 16 * 8  # only texts the byte bound cannot decide are tokenised
    # the 3.5 MB row is not copied into rejects.jsonl: its first RAW_LIMIT_CHARS characters and its length are
    assert rejected["raw_truncated"] and len(rejected["raw"]) == RAW_LIMIT_CHARS
    assert rejected["raw_chars"] == len(json.dumps(GOOD | {"chosen": huge}, ensure_ascii=False))


def test_truncating_a_text_too_long_by_its_bytes_tokenises_a_bounded_prefix(tmp_path):
    huge = "lovely " * 500_000
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD | {"chosen": huge}])
    tokens = CountingTokenizer()
    result = mapped(
        path,
        count_tokens=tokens.count,
        max_tokens=16,
        token_bound=TokenBound(8),
        too_long="truncate",
        truncate=tokens.truncate,
    )
    assert not result.rejects and result.pairs[0]["chosen"] == " ".join(["lovely"] * 16)
    assert max(tokens.seen) <= (16 + 1) * 8


def test_the_byte_bound_holds_for_the_tiny_byte_level_tokenizer(tiny_tokenizer):
    bound = token_bound(tiny_tokenizer)
    assert bound is not None and bound.max_token_bytes >= 2 and bound.dropped == b""  # trained on all 256 bytes
    texts = ["Review the park.", "lovely " * 200, "x" * 5000, "Café ☕ naïve 😀 " * 50, "\u2028\u0085\t\n\x04" * 30]
    for text in texts:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) * bound.max_token_bytes >= len(text.encode("utf-8")), text[:20]


def test_byte_symbols_are_the_byte_level_alphabet():
    from tokenizers import pre_tokenizers

    symbols = byte_symbols()
    assert sorted(symbols) == list(range(256)) and set(symbols.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert (symbols[ord("a")], symbols[0x20], symbols[0x00]) == ("a", "\u0120", "\u0100")  # "Ġ" is the space


def test_bytes_the_vocabulary_lacks_do_not_count_towards_the_bound():
    # A byte-level BPE trained without the full alphabet (as SmolLM2's lacks 0x04, 0xF5-0xFF, ...)
    # drops bytes it has no symbol for: a megabyte of them is no token, so no reason to reject.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        ["Review the park, lovely and calm."] * 20, trainer=trainers.BpeTrainer(vocab_size=60, show_progress=False)
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    bound = token_bound(tokenizer)
    assert bound is not None and 0x04 in bound.dropped and ord("a") not in bound.dropped
    text = "\x04" * 1_000_000 + " lovely park"
    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert bound.counted_bytes(text) == len(" lovely park") and tokens * bound.max_token_bytes >= len(" lovely park")
    result = map_rows(
        "rows",
        [(1, GOOD | {"chosen": text})],
        Mapping(),
        max_tokens=64,
        token_bound=bound,
        count_tokens=lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"]),
    )
    assert not result.rejects and tokens <= 64
    # Truncating a text whose kept prefix is only dropped bytes leaves nothing: a reject, not an empty pair.
    long_tail = "\x04" * 10_000 + " lovely park" * 200
    cut = map_rows(
        "rows",
        [(1, GOOD | {"chosen": long_tail})],
        Mapping(),
        max_tokens=4,
        token_bound=bound,
        count_tokens=lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"]),
        too_long="truncate",
        truncate=lambda t, limit: truncate_to_tokens(tokenizer, t, limit),
    )
    assert where(only_reject(cut)) == (1, "chosen", "too_long") and "nothing is left" in only_reject(cut)["detail"]


@pytest.mark.parametrize("change", ["normalizer", "whitespace_pre_tokenizer", "lstrip_token"])
def test_no_byte_bound_for_a_tokenizer_that_can_shrink_the_text(tiny_tokenizer, change):
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tiny_tokenizer.backend_tokenizer.to_str())
    if change == "normalizer":
        backend.normalizer = normalizers.NFKC()  # composes characters: fewer bytes than the text had
    elif change == "whitespace_pre_tokenizer":
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel()])
    else:
        backend.add_special_tokens([AddedToken("<mask>", lstrip=True)])  # swallows any run of spaces before it
    assert token_bound(PreTrainedTokenizerFast(tokenizer_object=backend)) is None


def test_a_line_of_megabytes_is_rejected_by_its_bytes_with_the_real_tokenizer(tmp_path, tiny_tokenizer):
    huge = "lovely " * 300_000  # 2.1 MB in one line
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, GOOD | {"prompt": "Rate the zoo.", "chosen": huge}])
    result = loaded(tiny_tokenizer, path, max_text_tokens=64, max_reject_fraction=0.5)
    rejected = only_reject(result)
    # "at least": decided by the byte count, without tokenising (a count would read "N tokens > limit")
    assert where(rejected) == (2, "chosen", "too_long") and rejected["detail"].startswith("at least ")
    assert rejected["raw_truncated"] and rejected["raw_chars"] > len(huge)


def test_truncate_keeps_the_first_tokens_within_the_limit_with_the_real_tokenizer(tmp_path, tiny_tokenizer):
    huge = "Lovely calm park, café ☕. " * 100_000
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD | {"chosen": huge}])
    result = loaded(tiny_tokenizer, path, max_text_tokens=20, too_long="truncate")
    chosen = result.pairs[0]["chosen"]
    assert not result.rejects and chosen and huge.startswith(chosen[:10])
    assert len(tiny_tokenizer(chosen, add_special_tokens=False)["input_ids"]) <= 20


@pytest.mark.parametrize("name", ["prefs.jsonl", "prefs.json", "prefs.csv"])
def test_a_utf8_bom_does_not_cost_row_one(tmp_path, name):
    rows = [GOOD, GOOD | {"chosen": "Fine."}]
    if name.endswith(".jsonl"):
        text = "".join(json.dumps(row) + "\n" for row in rows)
    elif name.endswith(".json"):
        text = json.dumps(rows)
    else:
        text = "prompt,chosen,rejected\r\n" + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\r\n" for r in rows)
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
    result = mapped(tmp_path / name)
    assert not result.rejects and [pair["source_row"] for pair in result.pairs] == [1, 2]
    assert result.pairs[0]["prompt"] == GOOD["prompt"]


def test_malformed_rows_keep_their_raw_line_or_cells(tmp_path):
    jsonl = mapped(write_jsonl(tmp_path / "prefs.jsonl", [GOOD, b"{not json", b"[1, 2]"]))
    assert [(r["row"], r["raw"], r["raw_chars"]) for r in jsonl.rejects] == [(2, "{not json", 9), (3, "[1, 2]", 6)]
    (tmp_path / "prefs.csv").write_text("prompt,chosen,rejected\np,a,b\np,a,b,extra\n")
    assert only_reject(mapped(tmp_path / "prefs.csv"))["raw"] == ["p", "a", "b", "extra"]
    (tmp_path / "prefs.json").write_text(json.dumps([GOOD, [1, 2]]))
    assert only_reject(mapped(tmp_path / "prefs.json"))["raw"] == [1, 2]


def test_columns_no_mapping_names_are_logged_once_per_source(tmp_path, tiny_tokenizer, caplog):
    caplog.set_level(logging.INFO, logger="robust_rlhf.data.sources")
    first = write_jsonl(
        tmp_path / "first.jsonl", [GOOD | {"chosen": f"Fine {i}.", "id": i, "score": 1} for i in range(3)]
    )
    second = write_jsonl(tmp_path / "second.jsonl", [GOOD | {"chosen": "Fine."}])
    result = loaded(tiny_tokenizer, first, second)
    assert not result.rejects and result.ignored_columns == {str(first): ["id", "score"], str(second): []}
    notes = [record.getMessage() for record in caplog.records if "are not mapped" in record.getMessage()]
    assert notes == [
        f"{first}: column(s) ['id', 'score'] are not mapped (layout columns maps "
        f"['prompt', 'chosen', 'rejected']) and are ignored"
    ]


# ---------------------------------------------------------------- several sources (prepare.source as a list)


def hh_row(prompt, chosen, rejected):
    """An HH-RLHF row: two whole conversations that share the prompt."""
    head = f"\n\nHuman: {prompt}\n\nAssistant:"
    return {"chosen": f"{head} {chosen}", "rejected": f"{head} {rejected}"}


def files_source(*paths, **fields):
    return SourceParams(kind="files", files=[str(path) for path in paths], **fields)


def test_sources_of_different_layouts_are_pooled_in_order(tmp_path, tiny_tokenizer):
    # As the paper profile mixes HH-RLHF (conversation_pair) and UltraFeedback (messages).
    hh = write_jsonl(
        tmp_path / "hh.jsonl", [hh_row("Is the park nice?", "Lovely.", "No."), hh_row("Zoo?", "Fun.", "Bad.")]
    )
    cafe = ("user", "Cafe?")
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"chosen": messages(cafe, ("assistant", "Cosy.")), "rejected": messages(cafe, ("assistant", "Cold."))}],
    )
    # hh's second pair again, as plain columns: the later copy is the duplicate
    columns = write_jsonl(
        tmp_path / "columns.jsonl",
        [{"prompt": "\n\nHuman: Zoo?\n\nAssistant:", "chosen": "Fun.", "rejected": "Bad."}, GOOD],
    )
    result = load_sources(
        [
            files_source(hh, layout="conversation_pair"),
            files_source(chat, layout="messages"),
            files_source(columns, max_reject_fraction=0.5),
        ],
        tiny_tokenizer,
    )
    assert [(Path(pair["source"]).name, pair["source_row"], pair["chosen"]) for pair in result.pairs] == [
        ("hh.jsonl", 1, "Lovely."),
        ("hh.jsonl", 2, "Fun."),
        ("chat.jsonl", 1, "Cosy."),
        ("columns.jsonl", 2, GOOD["chosen"]),
    ]
    assert [(Path(r["source"]).name, r["row"], r["reason"]) for r in result.rejects] == [
        ("columns.jsonl", 1, "duplicate_pair")
    ]
    assert result.rows_read == 5 and set(result.ignored_columns) == {str(hh), str(chat), str(columns)}


def test_one_source_in_a_list_loads_as_the_source_alone(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, GOOD, GOOD | {"chosen": ""}, GOOD | {"prompt": "Rate it."}])
    config = files_source(path, max_reject_fraction=0.6)
    alone, listed = load_source(config, tiny_tokenizer), load_sources([config], tiny_tokenizer)
    assert (listed.pairs, listed.rejects, listed.rows_read) == (alone.pairs, alone.rejects, alone.rows_read)
    assert len(alone.pairs) == 2 and len(alone.rejects) == 2


def test_too_many_rejects_in_a_later_source_keeps_every_earlier_reject(tmp_path, tiny_tokenizer):
    first = write_jsonl(tmp_path / "first.jsonl", [GOOD, GOOD | {"chosen": ""}, GOOD | {"prompt": "Rate it."}])
    second = write_jsonl(tmp_path / "second.jsonl", [GOOD | {"prompt": "Zoo?"}, {"prompt": "x"}, {"prompt": "y"}])
    sources = [files_source(first, max_reject_fraction=0.5), files_source(second, max_reject_fraction=0.5)]
    with pytest.raises(TooManyRejects, match=r"second.jsonl: 2 of 3 rows rejected") as raised:
        load_sources(sources, tiny_tokenizer)
    assert [(Path(r["source"]).name, r["row"]) for r in raised.value.rejects] == [
        ("first.jsonl", 2),
        ("second.jsonl", 2),
        ("second.jsonl", 3),
    ]
