"""Fault injection (issue 15), bad configs and bad data: each case through the command a user types (in-process, so
the suite stays fast), each refused before any rank starts with exit 2 and one message naming the key or the file,
never a traceback; skipped data is counted. With GPT_DS_FAULTS_REPORT=FILE, writes FILE.input.json: every case and
the message it got (docs/reliability.md quotes them)."""
from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_train import FAST  # noqa: E402

from gpt_ds.cli import main  # noqa: E402

SEEN: dict[str, dict] = {}

CONFIGS = [  # (override, what the message must say)
    ("optim.lrr=1e-3", "did you mean 'optim.lr'"),
    ("train.global_batch=7", "train.global_batch 7 is not divisible"),
    ("train.micro_batch=3", "train.global_batch 8 != train.micro_batch 3"),
    ("deepspeed.overrides={train_batch_size: 64}", "contradicts train.global_batch"),
    ("objective.kind=elektra", "did you mean 'electra'"),
    ("model.initializer_range=0", "model.initializer_range = 0.0 must be in (0, 1)"),
    ("optim.lr=-1e-3", "optim.lr = -0.001 must be a finite number > 0"),
    ("optim.lr=nan", "optim.lr = nan must be a finite number > 0"),
    ("optim.warmup_steps=-5", "optim.warmup_steps = -5 must be >= 0"),
    ("checkpoint.every=0", "checkpoint.every = 0 must be > 0"),
    ("logging.every=0", "logging.every = 0 must be > 0"),
    ("model.hidden_dropout=1.5", "model.hidden_dropout = 1.5 must be in [0, 1)"),
    ("model.hidden_size=65", "model.hidden_size 65 is not divisible by model.num_heads 2"),
    ("model.generator_hidden_ratio=1.5", "model.generator_hidden_ratio = 1.5 must be in (0, 1]"),
    ("data.seq_len=128", "data.seq_len 128 exceeds model.max_position_embeddings 64"),
    ("objective.temperature=0", "objective.temperature = 0.0 must be > 0"),
    ("train.max_steps=0", "train.max_steps = 0 must be > 0"),
    ("objective.mask_token_frac=0.5", "they must be >= 0 and sum to 1"),
    ("train.precision=fp8", "'train.precision' = 'fp8' is not allowed"),
    ("train.watchdog_timeout_s=-1", "train.watchdog_timeout_s = -1.0 must be >= 0"),
    ("deepspeed.generator=/nonexistent/ds.json", "/nonexistent/ds.json"),
    ("optim.weight_decay=-0.1", "optim.weight_decay = -0.1 must be a finite number >= 0"),
    ("optim.beta1=1.0", "optim.beta1"),
    ("train.max_steps=abc", "'train.max_steps' must be an integer"),
    ("deepspeed.overrides={zero_optimization: {stagee: 3}}", "stagee"),
    ("data.synthetic=false", "data.sources is empty"),
]


@pytest.mark.parametrize("override, needle", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_a_bad_config_gets_one_message_before_launch(override, needle, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["pretrain", "tiny", *FAST, f"run.dir={run}", override, "--nproc", "2"])
    err = capsys.readouterr().err
    SEEN[f"config: {override}"] = {"exit": code, "message": err.strip()}
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert err.count(needle) == 1 and "DeepSpeed refuses it: AssertionError: Check batch" not in err  # said once
    assert not (run / "checkpoints").exists()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from demo.corpora import news_articles
    from gpt_ds.data.tokenizer import train_tokenizer
    news = news_articles(tmp_path_factory.mktemp("news"), per_file=60, limit=60)
    return train_tokenizer(news, 500, tmp_path_factory.mktemp("tok") / "t", sample_docs=60)


def _csv(p: Path) -> None:
    p.write_text("id,body\n1,hello there\n")


def _parquet(p: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"body": ["hello there"]}), p)


def _saved_dataset(p: Path) -> None:
    import datasets
    datasets.Dataset.from_dict({"body": ["hello there"]}).save_to_disk(str(p))


def _gz_cut(p: Path) -> None:
    data = gzip.compress(b"".join(json.dumps({"text": f"doc {i} " * 50}).encode() + b"\n" for i in range(200)))
    p.write_bytes(data[: len(data) // 2])


DATA = [  # (file name, how to make it, what the message must say); each through `gpt-ds prepare`
    ("empty.txt", lambda p: p.write_text(""), "empty.txt: no document with any token"),
    ("blank.txt", lambda p: p.write_text(" \n\n\t\n"), "blank.txt: no document with any token"),
    ("img.txt", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)) * 4), "looks like a binary file"),
    ("cut.jsonl.gz", _gz_cut, "the gzip stream is damaged or truncated"),
    ("field.jsonl", lambda p: p.write_text('{"text": "a"}\n{"body": "c"}\n'), "field.jsonl:2: the record has no field 'text'"),
    ("notjson.jsonl", lambda p: p.write_text('{"text": "a"}\nnot json\n'), "notjson.jsonl:2: not valid JSON"),
    ("number.jsonl", lambda p: p.write_text('{"text": 5}\n'), "number.jsonl:1"),
    ("list.jsonl", lambda p: p.write_text('[1, 2]\n'), "list.jsonl:1"),
    ("x.docx", lambda p: p.write_bytes(b"PK"), "unsupported format"),
    ("missing.txt", None, "does not exist"),
    ("*.jsonl", None, "matches no file"),
    ("nocol.csv", _csv, "nocol.csv"),
    ("nocol.parquet", _parquet, "nocol.parquet"),
    ("saved", _saved_dataset, "saved"),
    ("emptydir", lambda p: p.mkdir(), "emptydir"),
    ("bad.parquet", lambda p: p.write_bytes(b"PAR1 not really"), "bad.parquet"),
    ("notgz.jsonl.gz", lambda p: p.write_text('{"text": "plain, not gzip"}\n'), "notgz.jsonl.gz"),
    ("nul.txt", lambda p: p.write_bytes(b"some text\x00\x00\x00 with nul bytes\n" * 50), "nul.txt"),
    ("deep.jsonl", lambda p: p.write_text('{"text": {"nested": "x"}}\n'), "deep.jsonl:1"),
    ("utf16.txt", lambda p: p.write_bytes("hello there, a UTF-16 file\n".encode("utf-16") * 20), "utf16.txt: looks like a binary file (NUL bytes; UTF-16 or UTF-32 text? convert it to UTF-8)"),
]


@pytest.mark.parametrize("name, make, needle", DATA, ids=[d[0] for d in DATA])
def test_bad_data_gets_one_message_naming_the_file(name, make, needle, tok, tmp_path, capsys):
    path = tmp_path / name
    if make is not None:
        make(path)
    out = tmp_path / "store"
    code = main(["prepare", "--input", str(path), "--tokenizer", str(tok), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    SEEN[f"data: {name}"] = {"exit": code, "message": err.strip()}
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (out / "manifest.json").exists()


def test_damaged_text_that_can_be_read_is_counted_not_dropped(tok, tmp_path, capsys):
    p = tmp_path / "mixed.txt"
    p.write_bytes(b"good text \xff\xfe here\n\n  \n\nsecond \xc3 doc\n\n")
    code = main(["prepare", "--input", str(p), "--tokenizer", str(tok), "--out", str(tmp_path / "s")])
    out = capsys.readouterr()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    SEEN["data: mixed.txt (readable)"] = {"exit": code, "message": (out.err + out.out).strip()[-600:]}
    assert code == 0 and manifest["totals"]["documents"] == 2, manifest
    assert manifest["skipped"]["invalid_utf8"] == 3 and manifest["skipped"]["files_with_invalid_utf8"] == [str(p)]
    assert '"invalid_utf8": 3' in out.out  # and reported in the command's last line


def teardown_module(module):
    if os.environ.get("GPT_DS_FAULTS_REPORT"):
        Path(os.environ["GPT_DS_FAULTS_REPORT"] + ".input.json").write_text(json.dumps(SEEN, indent=1))
