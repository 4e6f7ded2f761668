"""Preference data from a hub dataset or local files, mapped to (prompt, chosen, rejected) rows.

Three layouts (docs/data.md#layouts), named by `layout`:
- `columns`: prompt, chosen and rejected are text columns (UltraFeedback-binarized style when
  chosen/rejected are plain strings).
- `conversation_pair`: chosen and rejected are whole conversations that share the prompt, as in
  Anthropic HH-RLHF ("\\n\\nHuman: ... \\n\\nAssistant: ..."); the prompt is everything up to and
  including the last assistant marker of `chosen`, and `rejected` must start with the same prefix.
- `messages`: chosen and rejected are lists of {"role", "content"} messages; every message but the
  last is the prompt (it must be the same in both), the last must be the assistant's reply.

Whole-file problems (an empty file, a folder, a file that is not the format its name says or that
its parser cannot get past, a mapped column the data does not have) raise SourceError naming the
file (and the row, where one is to blame). Row problems never drop a row silently: each becomes a
reject with the source row number (1-based, header excluded), one named reason from REJECT_REASONS,
the field, and the raw values (the raw line of a malformed row), capped at RAW_LIMIT_CHARS.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from robust_rlhf.config import StageInputError

REJECT_REASONS = (
    "missing_field",  # the row has no value (or null) for a mapped field
    "wrong_type",  # a text field that is not a string / a messages field that is not a message list
    "empty_text",  # empty or whitespace-only text
    "invalid_utf8",  # bytes that are not valid UTF-8, or an escaped lone surrogate ("\ud800")
    "malformed_row",  # not a row object: a bad JSONL line, a CSV row with extra cells, nesting without end
    "chosen_equals_rejected",  # no preference to learn
    "too_long",  # more tokens than the limit (when too_long: reject)
    "duplicate_pair",  # the exact (prompt, chosen, rejected) seen before
    "prompt_prefix_mismatch",  # chosen and rejected conversations do not share the prompt
)
FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
HH_ASSISTANT_MARKER = "\n\nAssistant:"
RAW_LIMIT_CHARS = 4096  # a reject keeps at most this much of its raw row (a 50 MB row would fill rejects.jsonl)
RAW_MAX_DEPTH = 32  # deeper raw values are elided in a reject, so writing it cannot recurse without end
FIRST_REJECTS_SHOWN = 3  # rejects named in the too-many-rejects message
# Any UTF-16 surrogate: \udc80-\udcff are the bytes that `surrogateescape` kept from invalid UTF-8,
# and an escaped lone surrogate in JSON ("\ud800") decodes to the rest; neither can be encoded.
SURROGATE = re.compile(r"[\ud800-\udfff]")
logger = logging.getLogger(__name__)


class SourceError(StageInputError):
    """A whole source cannot be used; the message names the file (or dataset) and what is wrong."""


class TooManyRejects(SourceError):
    """More rows rejected than `max_reject_fraction` allows; carries every reject read so far, so the
    stage can keep them where the failure does not delete them."""

    def __init__(self, message: str, rejects: list[dict]) -> None:
        super().__init__(message)
        self.rejects = rejects


@dataclass(frozen=True)
class TokenBound:
    """What a byte-level BPE's vocabulary guarantees about token counts (`token_bound`): no token
    stands for more than `max_token_bytes` bytes of text, and a byte in `dropped` (its byte symbol
    is not in the vocabulary, and there is no unknown token) yields no token at all."""

    max_token_bytes: int
    dropped: bytes = b""

    def counted_bytes(self, text: str) -> int:
        """The UTF-8 bytes of `text` that end up in some token: there are at least this / L tokens."""
        return len(text.encode("utf-8").translate(None, self.dropped))


class MalformedRow(ValueError):
    """A row the parser could not make into a row object; `raw` is its text (or cells) as read."""

    def __init__(self, message: str, raw=None) -> None:
        super().__init__(message)
        self.raw = raw


@dataclass
class Mapping:
    """Which source column holds each field, and how the pair is laid out."""

    layout: str = "columns"
    prompt: str | None = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"

    def columns(self) -> list[str]:
        return [
            name for name in (self.prompt if self.layout == "columns" else None, self.chosen, self.rejected) if name
        ]


@dataclass
class MappedSource:
    """What `map_rows` kept and rejected from one source."""

    pairs: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    rows_read: int = 0
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)  # source -> columns no mapping names

    def reject_counts(self) -> dict[str, int]:
        return dict(Counter(reject["reason"] for reject in self.rejects))


# --- reading -------------------------------------------------------------------------------------


def file_format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise SourceError(f"{path}: unknown file type {path.suffix!r}; use one of {sorted(FORMATS)}") from None


def read_file_rows(path: str | Path) -> Iterator[tuple[int, dict | Exception]]:
    """(row number, row) for every row of a JSONL/JSON/CSV/Parquet file; a row that cannot be parsed
    comes as (row number, MalformedRow), so the caller can reject it by number.

    Text is decoded with `surrogateescape`, so an invalid UTF-8 byte survives as a lone surrogate
    that validation rejects for its row, not for the whole file; a leading UTF-8 BOM is dropped
    (`utf-8-sig`), else it would glue itself to row 1 or to the first CSV column's name.
    """
    path = Path(path)
    kind = file_format(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if not path.is_file():
        raise SourceError(
            f"{path}: {'a folder' if path.is_dir() else 'not a regular file'}, not a {kind} file; "
            f"list the files themselves in prepare.source.files"
        )
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: empty file")
    if kind == "parquet":
        yield from _parquet_rows(path)
        return
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SourceError(f"{path}: cannot be read: {type(error).__name__}: {error}") from None
    text = data.decode("utf-8-sig", errors="surrogateescape")
    if not text.strip():
        raise SourceError(f"{path}: empty file (only whitespace)")
    if kind == "jsonl":
        yield from _jsonl_rows(path, text)
    elif kind == "json":
        yield from _json_rows(path, text)
    else:
        yield from _csv_rows(path, text)


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of JSONL text, split on "\\n" alone (a trailing "\\r" stripped).

    Not `str.splitlines()`: it also breaks at U+2028, U+0085 and other characters that JSON allows
    raw inside a string (writers with ensure_ascii=False emit them), which turns one row into several
    malformed ones and shifts every later row number.
    """
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line[:-1] if line.endswith("\r") else line


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict | Exception]]:
    rows, parsed = [], 0
    for number, line in jsonl_lines(text):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
            parsed += 1
            rows.append((number, row))
        except ValueError as error:
            rows.append((number, MalformedRow(str(error), raw=line)))
        except RecursionError:
            # json's decoder recurses once per level: a hostile "[[[[..." line must not end the stage.
            rows.append((number, MalformedRow("nested too deeply to decode (RecursionError)", raw=line)))
    if not parsed:
        raise SourceError(f"{path}: not JSONL: no line is a JSON object (line {rows[0][0]}: {rows[0][1]})")
    yield from rows


def _json_rows(path: Path, text: str) -> Iterator[tuple[int, dict | Exception]]:
    try:
        data = json.loads(text)
    except ValueError as error:
        raise SourceError(f"{path}: not JSON: {error}") from None
    except RecursionError:
        # One document: json cannot skip the deep value and go on, so the file fails, naming the row.
        row = deep_json_row(text)
        where = f"row {row} is" if row is not None else "a value is"
        raise SourceError(
            f"{path}: {where} nested too deeply for the JSON decoder (RecursionError); flatten or remove it"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # {"data": [...]}, as `datasets` writes JSON with lines=False
    if not isinstance(data, list):
        raise SourceError(
            f"{path}: JSON must be a list of row objects (or {{'data': [...]}}), got {type(data).__name__}"
        )
    if not data:
        raise SourceError(f"{path}: empty file (no rows)")
    for number, row in enumerate(data, start=1):
        yield (
            number,
            row if isinstance(row, dict) else MalformedRow(f"a JSON {type(row).__name__}, not an object", raw=row),
        )


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def deep_json_row(text: str) -> int | None:
    """The 1-based number of the first element of a top-level JSON list that is nested too deeply to
    decode (RecursionError), found by decoding the elements one by one; None when the text is not a
    list or no single element is to blame."""
    decoder, index, number = json.JSONDecoder(), _JSON_SPACE.match(text).end(), 0
    if not text.startswith("[", index):
        return None
    index += 1
    while True:
        index = _JSON_SPACE.match(text, index).end()
        number += 1
        try:
            _, index = decoder.raw_decode(text, index)
        except RecursionError:
            return number
        except ValueError:
            return None
        index = _JSON_SPACE.match(text, index).end()
        if not text.startswith(",", index):
            return None
        index += 1


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict | Exception]]:
    # csv's default field limit (131,072 characters) is a guard, not a rule about preference data: a
    # long field is the token limit's business (a too_long reject). No field can outgrow the file, so
    # the file's length is the limit, set only while this file is parsed.
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, len(text)))
    try:
        rows = list(_csv_records(path, text))
    finally:
        csv.field_size_limit(previous)
    if not rows:
        raise SourceError(f"{path}: empty file (a header and no rows)")
    yield from rows


def _csv_records(path: Path, text: str) -> Iterator[tuple[int, dict | Exception]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    where = "the header"
    try:
        fieldnames = reader.fieldnames
        if not fieldnames or any(name is None or name == "" for name in fieldnames):
            raise SourceError(f"{path}: not CSV with a header row (header: {fieldnames})")
        where = "row 1"
        for number, row in enumerate(reader, start=1):
            where = f"row {number + 1}"  # if the next record fails, it is this one
            if None in row:  # more cells than header columns
                cells = [row[name] for name in fieldnames] + row[None]
                yield number, MalformedRow(f"{len(row[None])} more cells than the header has columns", raw=cells)
                continue
            yield number, row
    except csv.Error as error:
        # The parser's state after an error is unknown (it may be inside a quoted field), so the
        # rows after it cannot be trusted: the file fails, naming where.
        raise SourceError(f"{path}: {where} (line {reader.line_num}) is not parseable CSV: {error}") from None


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict | Exception]]:
    import pyarrow.lib
    import pyarrow.parquet as parquet

    try:
        table = parquet.read_table(path)
    except (pyarrow.lib.ArrowInvalid, OSError) as error:
        raise SourceError(f"{path}: not Parquet: {error}") from None
    if table.num_rows == 0:
        raise SourceError(f"{path}: empty file (no rows)")
    yield from enumerate(table.to_pylist(), start=1)


def dataset_rows(dataset) -> Iterator[tuple[int, dict | Exception]]:
    """(row number, row) of a `datasets.Dataset` (from `load_dataset` or `load_from_disk`)."""
    yield from enumerate(dataset, start=1)


def load_hub_rows(name: str, *, config: str | None, split: str, revision: str | None, trust_remote_code: bool = False):
    """A hub dataset split through `datasets.load_dataset`, or a dataset saved with `save_to_disk`
    when `name` is a local folder. Returns (description, dataset)."""
    import datasets

    if Path(name).is_dir():
        try:
            loaded = datasets.load_from_disk(name)
        except Exception as error:  # noqa: BLE001 - a folder without state.json, a broken arrow file, ...
            raise SourceError(
                f"{name}: a local folder, but not a dataset saved with save_to_disk "
                f"({type(error).__name__}: {error}); prepare.source.name must name such a folder "
                f"or a hub dataset, and local JSONL/JSON/CSV/Parquet files go in "
                f"prepare.source.files (kind: files)"
            ) from error
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise SourceError(f"{name}: no split {split!r} (has {sorted(loaded)})")
            loaded = loaded[split]
        return f"{name}[{split}]", loaded
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    try:
        loaded = datasets.load_dataset(name, config, split=split, revision=revision, **kwargs)
    except Exception as error:  # noqa: BLE001 - datasets raises many types; say which dataset failed
        raise SourceError(
            f"hub dataset {name!r} (config {config!r}, split {split!r}, revision {revision!r}): "
            f"{type(error).__name__}: {error}"
        ) from error
    return f"{name}/{config or 'default'}[{split}]@{revision or 'main'}", loaded


# --- mapping and validation -----------------------------------------------------------------------


def check_columns(source: str, available: Iterable[str], mapping: Mapping) -> list[str]:
    """A mapped column the data does not have is an error naming it (not a reject per row). Returns
    the columns that no mapping names, which are read and then ignored."""
    available = list(available)
    missing = [name for name in mapping.columns() if name not in available]
    if missing:
        raise SourceError(
            f"{source}: the column mapping names {missing}, which the data does not have "
            f"(columns: {available}); set prepare.source.columns"
        )
    return [name for name in available if name not in mapping.columns()]


def split_conversation(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """HH-RLHF layout: (prompt, chosen reply, rejected reply), the prompt ending with the last
    "\\n\\nAssistant:" of `chosen`; None when `rejected` does not share that prefix."""
    cut = chosen.rfind(HH_ASSISTANT_MARKER)
    if cut < 0:
        return None
    prompt = chosen[: cut + len(HH_ASSISTANT_MARKER)]
    if not rejected.startswith(prompt):
        return None
    return prompt, chosen[len(prompt) :].strip(), rejected[len(prompt) :].strip()


def render_messages(messages: list[dict]) -> str:
    """A prompt given as messages, as text: a lone user turn is its content; longer ones are
    "role: content" blocks (the policy's chat template wraps the text as one user turn)."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{message['role']}: {message['content']}" for message in messages)


def _is_messages(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )


def _surrogate_at(text: str) -> int | None:
    """Where the first UTF-16 surrogate of `text` is (a byte that was not UTF-8, kept by
    surrogateescape, or an escaped lone surrogate from JSON such as "\\ud800"), or None. Either
    would make the tokenizer (and any UTF-8 writer) raise, so such a text is rejected."""
    match = SURROGATE.search(text)
    return None if match is None else match.start()


def _printable(text: str) -> str:
    """`text` with each surrogate written as an escape, so it can be written as UTF-8: \\xNN for a
    byte that was not UTF-8 (surrogateescape keeps byte NN as U+DCNN), \\uNNNN for any other."""

    def escape(match: re.Match) -> str:
        code = ord(match.group())
        return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"

    return SURROGATE.sub(escape, text)


def _safe(value, depth: int = 0):
    """A raw value as it can be written to JSON: surrogates shown as escapes, and containers deeper
    than RAW_MAX_DEPTH elided (a hostile row nests thousands deep, and recursing into every level
    would end in RecursionError)."""
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, (list, tuple, dict)) and depth >= RAW_MAX_DEPTH:
        return f"<{type(value).__name__} nested deeper than {RAW_MAX_DEPTH} levels>"
    if isinstance(value, (list, tuple)):
        return [_safe(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {_printable(str(key)): _safe(item, depth + 1) for key, item in value.items()}
    return value if value is None or isinstance(value, (int, float, bool)) else repr(value)


def capped_raw(raw) -> dict:
    """The `raw`, `raw_chars` and `raw_truncated` fields of a reject.

    `raw` is the row (or a malformed row's line or cells) as it can be written to JSON; when its JSON
    text (a line: the line itself) is longer than RAW_LIMIT_CHARS, `raw` is the first RAW_LIMIT_CHARS
    characters of that text instead. `raw_chars` is always the full length.
    """
    if raw is None:
        return {"raw": None, "raw_chars": 0, "raw_truncated": False}
    safe = _safe(raw)
    text = safe if isinstance(safe, str) else json.dumps(safe, ensure_ascii=False)
    if len(text) <= RAW_LIMIT_CHARS:
        return {"raw": safe, "raw_chars": len(text), "raw_truncated": False}
    return {"raw": text[:RAW_LIMIT_CHARS], "raw_chars": len(text), "raw_truncated": True}


def _extract(row: dict, mapping: Mapping) -> tuple[dict | None, tuple[str, str, str] | None]:
    """The (prompt, chosen, rejected) texts of a row, or (None, (reason, field, detail))."""
    for name in mapping.columns():
        if row.get(name) is None:
            return None, ("missing_field", name, f"no value for column {name!r}")
    if mapping.layout == "messages":
        values = {name: row[name] for name in (mapping.chosen, mapping.rejected)}
        for name, value in values.items():
            if not _is_messages(value):
                return None, (
                    "wrong_type",
                    name,
                    f"expected a list of {{role, content}} messages, got {type(value).__name__}",
                )
        chosen_messages, rejected_messages = values[mapping.chosen], values[mapping.rejected]
        if chosen_messages[:-1] != rejected_messages[:-1] or not chosen_messages[:-1]:
            return None, (
                "prompt_prefix_mismatch",
                mapping.chosen,
                "chosen and rejected must share every message but the last, and have at least one",
            )
        for name, messages in ((mapping.chosen, chosen_messages), (mapping.rejected, rejected_messages)):
            if messages[-1]["role"] != "assistant":
                return None, (
                    "wrong_type",
                    name,
                    f"the last message is from {messages[-1]['role']!r}, not the assistant",
                )
        return {
            "prompt": render_messages(chosen_messages[:-1]),
            "chosen": chosen_messages[-1]["content"],
            "rejected": rejected_messages[-1]["content"],
        }, None
    for name in mapping.columns():
        if not isinstance(row[name], str):
            return None, ("wrong_type", name, f"expected text, got {type(row[name]).__name__}")
    if mapping.layout == "conversation_pair":
        split = split_conversation(row[mapping.chosen], row[mapping.rejected])
        if split is None:
            return None, (
                "prompt_prefix_mismatch",
                mapping.rejected,
                f"rejected does not start with chosen's prompt (up to its last {HH_ASSISTANT_MARKER!r})",
            )
        prompt, chosen, rejected = split
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, None
    return {"prompt": row[mapping.prompt], "chosen": row[mapping.chosen], "rejected": row[mapping.rejected]}, None


def token_excess(
    text: str, *, count_tokens: Callable[[str], int], max_tokens: int, bound: TokenBound | None
) -> str | None:
    """Why `text` is over `max_tokens` tokens, or None when it is not.

    With a `bound` (L = bound.max_token_bytes), a text whose counted bytes are n has at least n / L
    tokens, so one of more than max_tokens * L counted bytes is over the limit without being
    tokenised; only texts up to that size (plus bytes that yield no token) are tokenised. A 50 MB
    line took 72 s and 10 GB to tokenise whole.
    """
    if bound is not None:
        counted = bound.counted_bytes(text)
        if counted > max_tokens * bound.max_token_bytes:
            return (
                f"at least {math.ceil(counted / bound.max_token_bytes)} tokens ({counted} UTF-8 bytes, at most "
                f"{bound.max_token_bytes} per token) > limit {max_tokens}"
            )
    length = count_tokens(text)
    return f"{length} tokens > limit {max_tokens}" if length > max_tokens else None


def map_rows(
    source: str,
    rows: Iterable[tuple[int, dict | Exception]],
    mapping: Mapping,
    *,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int | None = None,
    too_long: str = "reject",
    truncate: Callable[[str, int], str] | None = None,
    token_bound: TokenBound | None = None,
) -> MappedSource:
    """Map and validate rows into (prompt, chosen, rejected) pairs; every row that fails becomes one
    reject with its row number and the first reason that applies (REJECT_REASONS).

    `token_bound` bounds the cost of a long text (`token_excess`): with it, `truncate` is given at
    most the first (max_tokens + 1) * L characters (L = token_bound.max_token_bytes), which hold more
    than max_tokens tokens unless they hold bytes that yield none, so their first max_tokens tokens
    are the text's (unless one pre-token word runs across the cut, which BPE may then merge
    differently). A text that truncates to nothing is rejected (too_long).
    """
    if too_long not in ("reject", "truncate"):
        raise ValueError(f"too_long must be 'reject' or 'truncate', got {too_long!r}")
    result = MappedSource()
    seen: set[tuple[str, str, str]] = set()

    def reject(number: int, reason: str, field_name: str | None, detail: str, raw) -> None:
        result.rejects.append(
            {
                "source": source,
                "row": number,
                "reason": reason,
                "field": field_name,
                "detail": detail,
                **capped_raw(raw),
            }
        )

    for number, row in rows:
        result.rows_read += 1
        if isinstance(row, Exception):
            reject(number, "malformed_row", None, str(row), getattr(row, "raw", None))
            continue
        try:
            pair, problem = _extract(row, mapping)
        except RecursionError:  # comparing message lists that nest without end
            reject(number, "malformed_row", None, "nested too deeply to compare (RecursionError)", row)
            continue
        if problem is not None:
            reject(number, *problem, row)
            continue
        bad = _text_problem(pair)
        if bad is not None:
            reject(number, *bad, row)
            continue
        if pair["chosen"] == pair["rejected"]:
            reject(number, "chosen_equals_rejected", "rejected", "chosen and rejected are the same text", row)
            continue
        if count_tokens is not None and max_tokens is not None:
            over = {}
            for name, text in pair.items():
                excess = token_excess(text, count_tokens=count_tokens, max_tokens=max_tokens, bound=token_bound)
                if excess is not None:
                    over[name] = excess
                    if too_long == "reject":
                        break  # the first field over is the reason; the others need not be tokenised
            if over and too_long == "reject":
                name = next(iter(over))
                reject(number, "too_long", name, over[name], row)
                continue
            for name in over:
                text = (
                    pair[name] if token_bound is None else pair[name][: (max_tokens + 1) * token_bound.max_token_bytes]
                )
                pair[name] = truncate(text, max_tokens)
            emptied = next((name for name in over if not pair[name].strip()), None)
            if emptied is not None:
                reject(number, "too_long", emptied, f"{over[emptied]}, and nothing is left after truncation", row)
                continue
        key = (pair["prompt"], pair["chosen"], pair["rejected"])
        if key in seen:
            reject(number, "duplicate_pair", None, "the same (prompt, chosen, rejected) appeared before", row)
            continue
        seen.add(key)
        result.pairs.append({**pair, "source": source, "source_row": number})
    return result


def _text_problem(pair: dict) -> tuple[str, str, str] | None:
    """(reason, field, detail) for the first text of `pair` that is not valid Unicode or is empty."""
    for name, text in pair.items():
        at = _surrogate_at(text)
        if at is not None:
            return (
                "invalid_utf8",
                name,
                (
                    f"{name} is not valid UTF-8: {_printable(text[at])} at character {at} "
                    f"(a byte that is not UTF-8, or an escaped lone surrogate)"
                ),
            )
        if not text.strip():
            return "empty_text", name, f"{name} is empty"
    return None


def describe_rejects(rejects: list[dict], detail_chars: int = 120) -> str:
    """Rejects as `row 5 field 'rejected': missing_field (no value ...)`, for an error message."""

    def one(reject: dict) -> str:
        detail = reject["detail"] if len(reject["detail"]) <= detail_chars else reject["detail"][:detail_chars] + "..."
        where = f"field {reject['field']!r}" if reject["field"] else "the whole row"
        return f"row {reject['row']} {where}: {reject['reason']} ({detail})"

    return "; ".join(one(reject) for reject in rejects)


def check_reject_fraction(result: MappedSource, source: str, max_fraction: float) -> None:
    """Fail, naming the source, its top reasons and its first rejected rows (row, field, reason),
    when too many rows were rejected; the error (TooManyRejects) carries the rejects."""
    if not result.rows_read:
        raise SourceError(f"{source}: no rows")
    fraction = len(result.rejects) / result.rows_read
    if fraction > max_fraction:
        top = ", ".join(
            f"{reason} x{count}" for reason, count in Counter(r["reason"] for r in result.rejects).most_common(3)
        )
        raise TooManyRejects(
            f"{source}: {len(result.rejects)} of {result.rows_read} rows rejected ({fraction:.0%} > "
            f"max_reject_fraction {max_fraction:.0%}); top reasons: {top}; first rejected: "
            f"{describe_rejects(result.rejects[:FIRST_REJECTS_SHOWN])}",
            result.rejects,
        )


# --- from params to splits ----------------------------------------------------------------------


def token_bound(tokenizer) -> TokenBound | None:
    """The TokenBound of `tokenizer` when it is a byte-level BPE (GPT-2, Llama 3, SmolLM2, the tests'
    tiny tokenizer); None for any other.

    A byte-level BPE turns each byte of the text into one symbol and each token is a run of symbols,
    so a text of n bytes has at least n / L tokens, L the most symbols in a token. A byte whose symbol
    the vocabulary lacks is dropped (no unknown token; SmolLM2 lacks 21, e.g. 0x04 and 0xF5-0xFF), so
    only the other bytes count. That holds only with no normaliser (NFC, NFKC, stripping can shrink a
    text), pre-tokenisers that drop nothing and no added token that swallows the whitespace beside it
    (lstrip/rstrip). L is taken as the longest token's UTF-8 length, which overstates tokens made of
    byte symbols (every symbol from U+0080 up takes two bytes), so the bound errs on the safe side.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if spec.get("normalizer") is not None or model.get("type") != "BPE" or model.get("unk_token") is not None:
        return None  # an unknown token may stand for any number of bytes
    steps = _pre_tokenizer_steps(spec.get("pre_tokenizer"))
    if not any(step.get("type") == "ByteLevel" for step in steps) or not all(map(_keeps_every_byte, steps)):
        return None
    if any(token.get("lstrip") or token.get("rstrip") for token in spec.get("added_tokens") or []):
        return None
    vocab = tokenizer.get_vocab()
    dropped = bytes(byte for byte, symbol in byte_symbols().items() if symbol not in vocab)
    return TokenBound(
        max_token_bytes=max(len(token.encode("utf-8", errors="surrogatepass")) for token in vocab), dropped=dropped
    )


def byte_symbols() -> dict[int, str]:
    """The symbol a byte-level BPE writes for each byte: GPT-2's `bytes_to_unicode` (openai/gpt-2
    encoder.py, used by the `tokenizers` ByteLevel pre-tokeniser): printable Latin-1 bytes stand for
    themselves, the other 68 are shifted to U+0100 and up, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    shifted = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable}, **{byte: chr(256 + index) for index, byte in enumerate(shifted)}}


def _pre_tokenizer_steps(spec: dict | None) -> list[dict]:
    if spec is None:
        return []
    if spec.get("type") == "Sequence":
        return [step for child in spec.get("pretokenizers", []) for step in _pre_tokenizer_steps(child)]
    return [spec]


def _keeps_every_byte(step: dict) -> bool:
    # These only cut the text into words; Split with behavior Removed (and Whitespace, Metaspace,
    # anything unknown) can drop or change characters.
    return step.get("type") in ("ByteLevel", "Digits", "Split", "Punctuation") and step.get("behavior") != "Removed"


def truncate_to_tokens(tokenizer, text: str, limit: int) -> str:
    """The text of the first `limit` tokens of `text`. A cut can end inside a character, which
    decodes to U+FFFD and may re-encode to more tokens, so tokens are dropped until the text fits."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:limit]
    while ids:
        cut = tokenizer.decode(ids)
        if len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= limit:
            return cut
        ids = ids[:-1]
    return ""


def load_source(config, tokenizer, *, trust_remote_code: bool = False) -> MappedSource:
    """Read, map and validate every file (or the hub split) that `config` (SourceParams) names;
    token lengths are counted with the policy's tokenizer. Columns no mapping names are logged once
    per source. Fails above `max_reject_fraction` (TooManyRejects, carrying every reject)."""
    mapping = Mapping(
        layout=config.layout,
        prompt=config.columns.prompt if config.layout == "columns" else None,
        chosen=config.columns.chosen,
        rejected=config.columns.rejected,
    )
    bound = token_bound(tokenizer)
    if bound is None:
        logger.info(
            "the policy's tokenizer is no byte-level BPE, so no byte count bounds its token count: each "
            "text is tokenised whole to check prepare.source.max_text_tokens (slow for texts of megabytes)"
        )
    options = {
        "count_tokens": lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
        "max_tokens": config.max_text_tokens,
        "too_long": config.too_long,
        "truncate": lambda text, limit: truncate_to_tokens(tokenizer, text, limit),
        "token_bound": bound,
    }
    merged = MappedSource()
    sources: list[tuple[str, MappedSource]] = []
    if config.kind == "hub":
        description, dataset = load_hub_rows(
            config.name,
            config=config.config,
            split=config.split,
            revision=config.revision,
            trust_remote_code=trust_remote_code,
        )
        ignored = check_columns(description, dataset.column_names, mapping)
        sources.append((description, map_rows(description, dataset_rows(dataset), mapping, **options)))
        merged.ignored_columns[description] = ignored
    else:
        for path in config.files:
            rows = list(read_file_rows(path))
            present = {key for _, row in rows if isinstance(row, dict) for key in row}
            ignored = check_columns(path, sorted(present), mapping)
            sources.append((path, map_rows(path, rows, mapping, **options)))
            merged.ignored_columns[path] = ignored
    for description, ignored in merged.ignored_columns.items():
        if ignored:
            logger.info(
                "%s: column(s) %s are not mapped (layout %s maps %s) and are ignored",
                description,
                ignored,
                mapping.layout,
                mapping.columns(),
            )
    for _, result in sources:
        merged.pairs += result.pairs
        merged.rejects += result.rejects
        merged.rows_read += result.rows_read
    # The same pair in two files is a duplicate too: keep the first.
    drop_repeated_pairs(merged)
    for description, result in sources:
        try:
            check_reject_fraction(result, description, config.max_reject_fraction)
        except TooManyRejects as error:
            raise TooManyRejects(str(error), merged.rejects) from None
    return merged


def load_sources(configs: list, tokenizer, *, trust_remote_code: bool = False) -> MappedSource:
    """`load_source` of each source (prepare.source's list, PrepareParams.sources) in order, pooled: the
    pairs of the first, then of the next, ...; a pair an earlier source already gave is a duplicate_pair
    reject. Each source's own `max_reject_fraction` applies to its own rows; TooManyRejects carries the
    rejects of every source read so far. One source gives exactly what `load_source` gives."""
    pooled = MappedSource()
    for config in configs:
        try:
            loaded = load_source(config, tokenizer, trust_remote_code=trust_remote_code)
        except TooManyRejects as error:
            raise TooManyRejects(str(error), pooled.rejects + error.rejects) from None
        pooled.pairs += loaded.pairs
        pooled.rejects += loaded.rejects
        pooled.rows_read += loaded.rows_read
        pooled.ignored_columns.update(loaded.ignored_columns)
    drop_repeated_pairs(pooled)
    return pooled


def drop_repeated_pairs(merged: MappedSource) -> None:
    """Keep the first of pairs that repeat across files or sources; each later copy becomes a
    duplicate_pair reject (appended after the rejects already there)."""
    seen: set[tuple[str, str, str]] = set()
    kept = []
    for pair in merged.pairs:
        key = (pair["prompt"], pair["chosen"], pair["rejected"])
        if key in seen:
            merged.rejects.append(
                {
                    "source": pair["source"],
                    "row": pair["source_row"],
                    "reason": "duplicate_pair",
                    "field": None,
                    "detail": "the same pair appeared in an earlier source",
                    **capped_raw({k: pair[k] for k in ("prompt", "chosen", "rejected")}),
                }
            )
            continue
        seen.add(key)
        kept.append(pair)
    merged.pairs = kept


def split_pairs(pairs: list[dict], *, seed: int, sizes: dict[str, int]) -> dict[str, list[dict]]:
    """Shuffle by seed and cut val, test, then train (each at most its size) so that no prompt is in
    two splits: pairs are grouped by prompt before cutting."""
    import random

    by_prompt: dict[str, list[dict]] = {}
    for pair in pairs:
        by_prompt.setdefault(pair["prompt"], []).append(pair)
    prompts = sorted(by_prompt)
    random.Random(seed).shuffle(prompts)
    splits: dict[str, list[dict]] = {name: [] for name in sizes}
    order = [name for name in ("val", "test", "train") if name in sizes]
    current = 0
    for prompt in prompts:
        while current < len(order) and len(splits[order[current]]) >= sizes[order[current]]:
            current += 1
        if current == len(order):
            break
        splits[order[current]] += by_prompt[prompt]
    return splits
