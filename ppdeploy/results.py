"""Result records to a file: JSON lines or Parquet, by the file's suffix, written atomically (``deploy run --output``).

A record is what :meth:`ppdeploy.classifier.Classifier.predict` yields: ``{class_ids, scores, label_names,
filename}``, or ``{filename, error}`` for an input that could not be read. In Parquet both kinds share one table
whose missing columns are null.

File names are whatever bytes the file system holds; Python gives the bytes that are not valid UTF-8 as lone
surrogates (PEP 383: byte ``0xNN`` becomes ``U+DCNN``), which no UTF-8 writer accepts. So that no record is lost
and none splits over two lines:

- JSON (``--json``, ``*.jsonl``): such a character is written as the JSON escape ``\\udcNN``; the output is valid
  UTF-8, and ``os.fsencode(json.loads(line)["filename"])`` gives back the exact bytes of the name. Newlines and
  tabs in names are escaped by JSON itself.
- text lines and Parquet: :func:`text_name` writes an undecodable byte as ``\\xNN``, a backslash as ``\\\\``
  and a control character (newline, tab, ...) as ``\\n``, ``\\t`` or ``\\xNN``, so a name is always one line
  and can be decoded back (:func:`untext_name`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ppdeploy.errors import BackendUnavailableError, DeployError, one_line

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
# Column order: dropping a record's nulls gives back the record with its keys in Classifier order.
FIELDS = ("class_ids", "scores", "label_names", "filename", "error")
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNPRINTABLE = re.compile("[\\\\\x00-\x1f\x7f\ud800-\udfff]")
_TEXT_ESCAPE = re.compile(r"\\(?:x([0-9a-f]{2})|([nrt\\]))")
_NAMED = {"\n": "n", "\r": "r", "\t": "t", "\\": "\\"}


def json_line(record: dict) -> str:
    """One record as one line of JSON that is valid UTF-8 whatever its file name (see the module docstring)."""
    line = json.dumps(record, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def text_name(text: str) -> str:
    """``text`` on one printable line, losslessly: backslash, control characters and undecodable bytes escaped."""
    return _UNPRINTABLE.sub(_escape_char, text)


def untext_name(text: str) -> str:
    """The inverse of :func:`text_name` (the escaped bytes come back as PEP 383 surrogates)."""
    def unescape(match: re.Match) -> str:
        if match.group(2):
            return {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}[match.group(2)]
        value = int(match.group(1), 16)
        return chr(0xDC00 + value) if value >= 0x80 else chr(value)
    return _TEXT_ESCAPE.sub(unescape, text)


def _escape_char(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return "\\" + _NAMED[char]
    code = ord(char)
    return f"\\x{code - 0xDC00 if 0xDC80 <= code <= 0xDCFF else code:02x}"


def output_format(path: str | Path) -> str:
    """``jsonl`` or ``parquet`` from the suffix of ``path``.

    Raises:
        DeployError: any other suffix.
    """
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DeployError(one_line(f"--output '{path}'", "unknown file type",
                                   "name it *.jsonl (JSON lines) or *.parquet"))
    return fmt


def arrow_schema() -> Any:
    """The Parquet/Arrow schema of result and error records.

    Raises:
        BackendUnavailableError: pyarrow is not installed.
    """
    try:
        import pyarrow as pa
    except ImportError:
        raise BackendUnavailableError(one_line("Parquet output", "pyarrow is not installed",
                                               "pip install 'ppdeploy[ray]' (or pyarrow), or write *.jsonl")) from None
    return pa.schema([("class_ids", pa.list_(pa.int64())), ("scores", pa.list_(pa.float64())),
                      ("label_names", pa.list_(pa.string())), ("filename", pa.string()), ("error", pa.string())])


def records_table(records: list[dict]) -> Any:
    """Records as one Arrow table of :func:`arrow_schema` (names and errors that are not valid UTF-8 escaped by
    :func:`text_name`: Arrow strings must be UTF-8)."""
    import pyarrow as pa

    safe = [{key: text_name(value) if isinstance(value, str) and _SURROGATE.search(value) else value
             for key, value in record.items()} for record in records]
    return pa.Table.from_pylist(safe, schema=arrow_schema())


def table_records(table: Any) -> list[dict]:
    """Records back from an Arrow table, null columns dropped."""
    return [{key: row[key] for key in FIELDS if row.get(key) is not None} for row in table.to_pylist()]


def write_results(batches: Iterable[list[dict]], path: str | Path) -> tuple[int, int]:
    """Write every batch's records to ``path`` (JSON lines or Parquet), streaming, then rename into place.

    Nothing is left at ``path`` when the run fails half-way.

    Returns:
        (records written, error records among them).
    """
    from ppdeploy.fsutil import staging_file

    fmt = output_format(path)
    total = failed = 0
    with staging_file(path) as tmp, _batch_writer(fmt, tmp) as write:
        for batch in batches:
            write(batch)
            total, failed = total + len(batch), failed + sum("error" in r for r in batch)
    return total, failed


@contextlib.contextmanager
def _batch_writer(fmt: str, path: Path) -> Iterator[Callable[[list[dict]], None]]:
    """A function appending one batch of records to ``path`` in ``fmt``, valid inside the ``with``."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(path, arrow_schema()) as writer:
            yield lambda batch: writer.write_table(records_table(batch))
    else:
        with open(path, "w", encoding="utf-8") as fh:
            yield lambda batch: fh.writelines(json_line(r) + "\n" for r in batch)
