"""metrics.jsonl: the one reader (gpt-ds plot, the model card) and the resume rule that keeps a step from appearing
twice."""
import json

import pytest

from gpt_ds.errors import GptDsError
from gpt_ds.train.metrics_file import NAME, drop_rows_after, read_rows


def test_rows_logged_after_the_resumed_step_are_dropped_and_said(tmp_path, capsys):
    path = tmp_path / NAME
    path.write_text("".join(json.dumps({"step": s, "gen_loss": 1.0 / s}) + "\n" for s in range(1, 7)) + "not json\n")
    assert drop_rows_after(path, 3) == 3
    assert [r["step"] for r in read_rows(tmp_path, strict=False)] == [1, 2, 3]
    assert "dropped 3 row(s) logged after step 3" in capsys.readouterr().err
    assert path.read_text().splitlines()[-1] == "not json"  # a line it cannot read is kept, not judged
    assert drop_rows_after(path, 3) == 0 and drop_rows_after(tmp_path / "none.jsonl", 0) == 0


def test_the_reader_names_a_bad_line_or_skips_it_when_asked(tmp_path):
    with pytest.raises(GptDsError, match="no metrics.jsonl"):
        read_rows(tmp_path)
    assert read_rows(tmp_path, strict=False) == []
    (tmp_path / NAME).write_text('{"step": 1, "gen_loss": 2.0}\n{"event": "resume"}\n{"step": 2, "gen_lo\n')
    with pytest.raises(GptDsError, match=r"metrics.jsonl, line 3: not JSON"):
        read_rows(tmp_path)
    assert read_rows(tmp_path, strict=False) == [{"step": 1, "gen_loss": 2.0}]  # events are not training rows
