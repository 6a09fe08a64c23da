"""metrics.jsonl, the run's training record: one JSON object per logged step (`gen_loss` marks a training row; other
events may share the file). The one reader (`gpt-ds plot`, the export's model card) and the resume rule that keeps a
step from appearing twice; no torch, so reading a run stays cheap."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from gpt_ds.errors import GptDsError

NAME = "metrics.jsonl"


def read_rows(run_dir: Path, strict: bool = True) -> list[dict]:
    """The training rows in file order. strict: a line that is not JSON is an error naming it (else it is skipped:
    the card of an export must not fail on a half-written last line)."""
    path = run_dir / NAME
    if not path.is_file():
        if not strict:
            return []
        raise GptDsError(f"{run_dir}: no {NAME} (is it a run folder? `gpt-ds pretrain` writes one there)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if strict:
                raise GptDsError(f"{path}, line {n}: not JSON") from None
            continue
        if isinstance(row, dict) and "gen_loss" in row:
            rows.append(row)
    return rows


def drop_rows_after(path: Path, step: int) -> int:
    """Steps logged after the checkpoint a run resumes from are run again: their old rows go (written aside, then
    renamed), so metrics.jsonl never holds a step twice. Returns the number of rows dropped."""
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            later = json.loads(line).get("step", 0) > step
        except (json.JSONDecodeError, AttributeError):
            later = False  # a line it cannot read is kept as it is, not judged
        if later:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(path)
        print(f"gpt_ds: {path}: dropped {dropped} row(s) logged after step {step}; those steps run again",
              file=sys.stderr, flush=True)
    return dropped
