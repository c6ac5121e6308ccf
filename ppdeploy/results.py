"""Result records to a file: JSON lines or Parquet, by the file's suffix, written atomically (``deploy run --output``).

A record is what :meth:`ppdeploy.classifier.Classifier.predict` yields: ``{class_ids, scores, label_names,
filename}``, or ``{filename, error}`` for an input that could not be read. In Parquet both kinds share one table
whose missing columns are null.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ppdeploy.errors import BackendUnavailableError, DeployError, one_line

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
# Column order: dropping a record's nulls gives back the record with its keys in Classifier order.
FIELDS = ("class_ids", "scores", "label_names", "filename", "error")


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
    """Records as one Arrow table of :func:`arrow_schema`."""
    import pyarrow as pa

    return pa.Table.from_pylist(records, schema=arrow_schema())


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
            yield lambda batch: fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in batch)
