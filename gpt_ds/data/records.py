"""Record formats -> a stream of texts (None for a missing value): jsonl(.gz), csv, parquet, datasets' save_to_disk.
A record without the text field stops the run with the file (and line) named."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Iterator

from gpt_ds.data.textio import ReadStats, lines
from gpt_ds.errors import GptDsError


def read_jsonl(path: Path, field_: str, stats: ReadStats) -> Iterator[str | None]:
    for no, line in enumerate(lines(path, stats), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise GptDsError(f"{path}:{no}: not valid JSON ({e.msg}); fix or remove the line")
        if not isinstance(rec, dict) or field_ not in rec:
            keys = list(rec)[:8] if isinstance(rec, dict) else type(rec).__name__
            raise GptDsError(f"{path}:{no}: the record has no field '{field_}' (it has {keys}); "
                             f"pass --text-field with the name of the text field")
        value = rec[field_]
        if value is not None and not isinstance(value, str):
            raise GptDsError(f"{path}:{no}: field '{field_}' is {type(value).__name__}, not text")
        yield value


def read_csv(path: Path, field_: str, stats: ReadStats) -> Iterator[str | None]:
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(_lines_keepends(path, stats))
    header = next(reader, None)
    if header is None:
        return
    if field_ not in header:
        raise GptDsError(f"{path}: the CSV header has no column '{field_}' (columns: {header[:12]}); "
                         f"pass --text-field with the name of the text column")
    col = header.index(field_)
    for row in reader:
        yield row[col] if col < len(row) else None


def _lines_keepends(path: Path, stats: ReadStats) -> Iterator[str]:
    for line in lines(path, stats):
        yield line + "\n"


def read_parquet(path: Path, field_: str, stats: ReadStats) -> Iterator[str | None]:
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise GptDsError(f"{path}: not a readable parquet file ({e})")
    names = pf.schema_arrow.names
    if field_ not in names:
        raise GptDsError(f"{path}: the parquet file has no column '{field_}' (columns: {names[:12]}); "
                         f"pass --text-field with the name of the text column")
    for batch in pf.iter_batches(batch_size=256, columns=[field_]):
        yield from batch.column(0).to_pylist()


def read_hf(path: Path, field_: str, stats: ReadStats) -> Iterator[str | None]:
    import datasets
    ds = datasets.load_from_disk(str(path))
    splits = [ds[k] for k in sorted(ds)] if isinstance(ds, datasets.DatasetDict) else [ds]
    for split in splits:
        if field_ not in split.column_names:
            raise GptDsError(f"{path}: the dataset has no column '{field_}' (columns: {split.column_names[:12]}); "
                             f"pass --text-field with the name of the text column")
        for batch in split.select_columns([field_]).iter(batch_size=256):
            yield from batch[field_]


RECORD_READERS = {"jsonl": read_jsonl, "csv": read_csv, "parquet": read_parquet, "hf": read_hf}
