"""Dataset files — CSV, TSV or JSON Lines with ``text,label`` or ``prompt,response`` — read and checked row by
row: every problem names the file and line and says how to fix it."""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Optional

from loralab.data.registry import NAMES
from loralab.errors import DataError

FILE_SUFFIXES = (".csv", ".tsv", ".jsonl")
TEXT_COLUMNS = ("text", "sentence", "prompt", "response")


def _read_text(path: Path) -> str:
    """A dataset file as text (see `_read_text_file`); the name must be a dataset file's."""
    if not path.exists():
        raise DataError(f"dataset {str(path)!r} is neither a known name {NAMES} nor an existing file.")
    if path.suffix == ".json":
        raise DataError(f"{path}: loralab reads JSON Lines (one object per line, .jsonl), not a .json array; convert it "
                        f"with: python -c \"import json,sys; [print(json.dumps(r)) for r in json.load(open(sys.argv[1]))]\" "
                        f"{shlex.quote(str(path))} > {shlex.quote(str(path.with_suffix('.jsonl')))}")
    if path.suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: use a .csv, .tsv or .jsonl file with columns text,label or prompt,response.")
    return _read_text_file(path)


def _read_text_file(path: Path) -> str:
    """The file as text: UTF-8, a byte-order mark dropped; other encodings are refused with the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line} is not UTF-8 (byte {raw[err.start]:#04x}); re-save the file as UTF-8, "
                        f"e.g. iconv -f latin1 -t utf-8 {shlex.quote(str(path))} > "
                        f"{shlex.quote(str(path.with_name('fixed' + path.suffix)))}") from None


def _read_records(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line number, record) for every non-empty row of a CSV, TSV or JSONL file; refuses what would be read
    wrongly without an error: a column named twice, a row with more fields than the header, a quote that
    swallows the rows after it, a text that is not a string, NUL bytes."""
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"{path}:{line} holds a NUL byte: this is not a text file (or it is damaged); re-save it as "
                        "UTF-8 text.")
    if path.suffix == ".jsonl":
        records = _jsonl_records(path, text)
    else:
        records = _delimited_records(path, text.replace("\r\n", "\n").replace("\r", "\n"))  # CR-only ends too
    if not records:
        raise DataError(f"{path} has no rows.")
    return records


class _RepeatedKey(Exception):
    pass


def _object_without_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, refusing a key given twice (``json`` silently keeps the last, as a CSV reader would a
    repeated column)."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        raise _RepeatedKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return record


def _jsonl_records(path: Path, text: str) -> list[tuple[int, dict]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_object_without_repeated_keys)
        except (json.JSONDecodeError, RecursionError) as err:
            reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
            raise DataError(f"{path}:{number} is not valid JSON ({reason}).") from None
        except _RepeatedKey as err:
            raise DataError(f"{path}:{number} names {err.args[0]!r} more than once; which value to read would be a "
                            "guess (JSON readers keep the last). Keep one.") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number} is a JSON {type(record).__name__}; each line must be an object "
                            'like {"text": ..., "label": ...}.')
        for column in TEXT_COLUMNS:
            value = record.get(column)
            if value is not None and not isinstance(value, str):
                raise DataError(f"{path}:{number}: {column!r} is a JSON {type(value).__name__} ({str(value)[:40]}); it "
                                "must be a string.")
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise DataError(f"{path}:{number}: {column!r} holds a lone surrogate escape (e.g. \\ud800), "
                                    "which is not text; fix the line.") from None
        records.append((number, record))
    return records


def _delimited_records(path: Path, text: str) -> list[tuple[int, dict]]:
    # a TSV field is everything between tabs, quotes included (as GLUE's files are written)
    tsv = path.suffix == ".tsv"
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    delimiter = "\t" if tsv else ","
    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # a long text is allowed; it is cut to --max-length tokens anyway
    try:
        reader = csv.reader(io.StringIO(text), **options)
        header = next(reader, None)
        if not header:
            return []
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise DataError(f"{path}: the header names column(s) {twice} more than once; which one to read would be a "
                            "guess. Rename or drop the repeated columns.")
        rows, start = [], reader.line_num
        for row in reader:
            number, start = start + 1, reader.line_num
            if not any(field.strip() for field in row):
                continue
            if len(row) > len(header):
                raise DataError(f"{path}:{number} has {len(row)} fields, the header {len(header)}: an unquoted "
                                f"{'tab' if tsv else 'comma'} in the text? Quote the field (\"...\", inner quotes "
                                "doubled).")
            rows.append((number, reader.line_num - number, row))
        _refuse_swallowed_rows(path, rows, delimiter)
        return [(number, dict(zip(header, row))) for number, _, row in rows]
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num} cannot be read as {'TSV' if tsv else 'CSV'} ({err}).") from None
    finally:
        csv.field_size_limit(old_limit)


def _refuse_swallowed_rows(path: Path, rows: list[tuple[int, int, list[str]]], delimiter: str) -> None:
    """A stray quote makes the reader take the rows after it into one field, until the next quote: refuse a row
    spanning lines of which one ends like the single-line rows do (a delimiter and a value their last column
    holds, such as a label)."""
    endings = {row[-1].strip() for _, spanned, row in rows if not spanned and row and row[-1].strip()}
    for number, spanned, row in rows:
        inner = "\n".join(row).splitlines()[1:]
        if spanned and any(delimiter in line and line.rsplit(delimiter, 1)[1].strip() in endings for line in inner):
            raise DataError(f"{path}:{number}: a quote opened in this row runs over the next {spanned} line(s), which "
                            "look like rows of their own: a stray \" in the text? Quote the whole field and double the "
                            "quotes inside it (\"\").")


def canonical_label(value) -> Optional[str]:
    """A label as one canonical string: 1, 1.0 and "1" are the same class; None for a missing label."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"label {value!r} is not a finite number; labels are names or finite numbers.")
    if isinstance(value, (int, float)) or is_number(value):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    if isinstance(value, str):
        return value.strip()
    raise DataError(f"label {value!r} is a {type(value).__name__}; labels are names or numbers.")


def is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def _required_text(path: Path, number: int, record: dict, column: str) -> str:
    value = record.get(column)
    if value is None or not str(value).strip():
        raise DataError(f"{path}:{number} has no {column}; every row needs a non-empty {column!r}.")
    return str(value)


def _classification_rows(path: Path, records: list, labels: Optional[list[str]]) -> tuple[list[str], list[dict]]:
    names = []
    for number, record in records:
        _required_text(path, number, record, "text")
        name = canonical_label(record.get("label"))
        if name is None:
            raise DataError(f"{path}:{number} has no label; every row needs one (or drop the row).")
        names.append(name)
    kinds = {is_number(n) for n in names}
    if len(kinds) > 1 and not labels:
        numbered = list(zip((number for number, _ in records), names))
        line, numeric = next((k, n) for k, n in numbered if is_number(n))
        other, named = next((k, n) for k, n in numbered if not is_number(n))
        raise DataError(f"{path}: labels mix numbers ({path}:{line}: {numeric!r}) and names ({path}:{other}: "
                        f"{named!r}); use one kind for every row.")
    classes = [canonical_label(c) for c in labels] if labels else sorted(
        set(names), key=lambda n: (0, float(n), "") if is_number(n) else (1, 0.0, n))
    if len(classes) < 2:
        raise DataError(f"{path}: every row has the label {classes[0]!r}; classification needs at least 2 classes.")
    rows = []
    for (number, record), name in zip(records, names):
        if name not in classes:
            raise DataError(f"{path}:{number} has unknown label {name!r}; expected one of {classes}.")
        rows.append({"text": str(record["text"]), "label": classes.index(name)})
    return classes, rows


def read_file(path: Path, labels: Optional[list[str]]) -> tuple[str, list[str], list[dict]]:
    records = _read_records(path, _read_text(path))
    columns = set().union(*(record.keys() for _, record in records))
    if {"prompt", "response"} <= columns:
        rows = [{"prompt": _required_text(path, n, r, "prompt"), "response": _required_text(path, n, r, "response")}
                for n, r in records]
        return "causal_lm", [], rows
    text_column = "text" if "text" in columns else "sentence"  # GLUE's name for it (SST-2, CoLA)
    if not {text_column, "label"} <= columns:
        raise DataError(f"{path} has columns {sorted(columns)}; it needs text,label (classification; 'sentence' "
                        "works for text) or prompt,response.")
    if text_column != "text":
        records = [(n, {**r, "text": r.get(text_column)}) for n, r in records]
    classes, rows = _classification_rows(path, records, labels)
    return "classification", classes, rows


INPUT_COLUMNS = ("text", "sentence", "prompt")


def read_inputs(path: str) -> list[str]:
    """Texts to predict on (see `read_input_file`)."""
    return read_input_file(path)[0]


def read_input_file(path: str) -> tuple[list[str], list[int]]:
    """Texts to predict on, and the numbers (from 1) of the blank lines skipped: the non-empty lines of a .txt
    file (``-``: standard input), or the ``text`` (``sentence``, ``prompt``) column of a CSV/TSV/JSONL file —
    labels and responses, if any, are ignored (a table has no blank lines to skip)."""
    if path == "-":
        return _non_blank(line.rstrip("\r\n") for line in sys.stdin)
    file = Path(path)
    if not file.is_file():
        raise DataError(f"input file {path!r} does not exist.")
    if file.suffix not in (".txt", *FILE_SUFFIXES):
        raise DataError(f"{path}: inputs come from a .txt file (one per line) or a .csv, .tsv or .jsonl file.")
    if file.suffix == ".txt":
        return _non_blank(_read_text_file(file).splitlines())
    records = _read_records(file, _read_text(file))
    columns = set().union(*(record.keys() for _, record in records))
    column = next((c for c in INPUT_COLUMNS if c in columns), None)
    if column is None:
        raise DataError(f"{path} has columns {sorted(columns)}; inputs are read from a 'text', 'sentence' or "
                        "'prompt' column (or give a .txt file with one input per line).")
    return [_required_text(file, number, record, column) for number, record in records], []


def _non_blank(lines) -> tuple[list[str], list[int]]:
    texts, blank = [], []
    for number, line in enumerate(lines, 1):
        if line.strip():
            texts.append(line)
        else:
            blank.append(number)
    return texts, blank


