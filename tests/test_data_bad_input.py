"""Bad input: each case is replaced-and-counted, skipped-and-counted, or refused with the file (and line) named."""
import gzip
import json
import tracemalloc

import pytest

from gpt_ds.data import textio
from gpt_ds.data.readers import ReadStats, expand_inputs, iter_documents, iter_parts
from gpt_ds.errors import GptDsError


def docs_of(path, **kw):
    stats = ReadStats()
    return list(iter_documents(expand_inputs([str(path)]), stats, **kw)), stats


def test_invalid_utf8_replaced_and_counted(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"good text \xff\xfe here\n\nsecond \xc3 doc \xe2\x82\n")
    docs, st = docs_of(p)
    assert docs == ["good text \ufffd\ufffd here", "second \ufffd doc \ufffd"]
    assert st.invalid_utf8 == 4 and st.documents == 2


def test_empty_documents_skipped_and_counted(tmp_path):
    p = tmp_path / "e.txt"
    p.write_text("\n\n  \n\none\n\n\t\n\n\ntwo\n\n")
    docs, st = docs_of(p)
    assert docs == ["one", "two"] and st.empty_documents == 1    # the blank start; blank lines at the end are none
    p.write_text("   \n")
    assert docs_of(p)[0] == [] and docs_of(p)[1].empty_documents == 1
    q = tmp_path / "e.jsonl"
    q.write_text('{"text": ""}\n{"text": "x"}\n{"text": null}\n\n')
    docs, st = docs_of(q)
    assert docs == ["x"] and st.empty_documents == 2


def test_binary_file_refused(tmp_path):
    p = tmp_path / "img.txt"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    with pytest.raises(GptDsError, match="img.txt: looks like a binary file"):
        docs_of(p)


def test_truncated_gzip_names_the_file(tmp_path):
    p = tmp_path / "t.jsonl.gz"
    data = gzip.compress(b"".join(json.dumps({"text": f"doc {i} " * 50}).encode() + b"\n" for i in range(200)))
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(GptDsError, match="t.jsonl.gz: the gzip stream is damaged or truncated"):
        docs_of(p)


def test_jsonl_missing_field_names_file_and_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{"body": "c"}\n')
    with pytest.raises(GptDsError, match=r"m.jsonl:3: the record has no field 'text'.*--text-field"):
        docs_of(p)
    p.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(GptDsError, match=r"m.jsonl:2: not valid JSON"):
        docs_of(p)


def test_unknown_format_and_missing_path(tmp_path):
    (tmp_path / "x.docx").write_bytes(b"PK")
    with pytest.raises(GptDsError, match="unsupported format"):
        expand_inputs([str(tmp_path / "x.docx")])
    with pytest.raises(GptDsError, match="does not exist"):
        expand_inputs([str(tmp_path / "nope.txt")])
    with pytest.raises(GptDsError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.jsonl")])


def test_100mb_single_line_read_in_chunks(tmp_path):
    p = tmp_path / "line.txt"
    word = b"lorem ipsum dolor sit amet "   # 27 bytes
    n = 100_000_000 // len(word) + 1
    with open(p, "wb") as f:
        for _ in range(n // 100_000 + 1):
            f.write(word * 100_000)
    size = p.stat().st_size
    assert size >= 100_000_000
    stats = ReadStats()
    tracemalloc.start()
    total, parts, longest = 0, 0, 0
    for text, last in iter_parts(expand_inputs([str(p)])[0], stats):
        total += len(text)
        parts += 1
        longest = max(longest, len(text))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert stats.documents == 1 and parts >= 95 and longest <= textio.PART_CHARS
    assert total == size - 1                       # the trailing space is stripped; nothing else is lost
    assert peak < 40 * textio.PART_CHARS          # chunks, not the whole line, are held


def test_long_document_parts_tokenize_like_the_whole(tmp_path, monkeypatch):
    from demo.corpora import news_articles
    from gpt_ds.data.store.prepare import prepare
    from gpt_ds.data.store import shard_paths
    from gpt_ds.data.tokenizer import load_tokenizer, train_tokenizer
    news = news_articles(tmp_path / "news", per_file=40, limit=40)
    tok_dir = train_tokenizer(news, 400, tmp_path / "tok", sample_docs=40)
    text = news[0].read_text().replace("\n\n", " ")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "one.txt").write_text(text)
    monkeypatch.setattr(textio, "PART_CHARS", 2000)
    monkeypatch.setattr(textio, "READ_BYTES", 3000)
    prepare([str(tmp_path / "in")], str(tok_dir), tmp_path / "s", workers=1, seq_lens=(), quiet=True)
    import numpy as np
    got = np.fromfile(shard_paths(tmp_path / "s", 0)["tok"], dtype="uint16").tolist()
    assert got == load_tokenizer(tok_dir)(text, add_special_tokens=False)["input_ids"]
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["totals"]["documents"] == 1
