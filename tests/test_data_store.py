"""Token store: round trip, manifest counts, byte-identical and resumable builds, sample index, load-time checks."""
import gzip
import json
import shutil

import numpy as np
import pytest

from gpt_ds.config import load_config
from gpt_ds.data.sources import open_dataset
from demo.corpora import news_articles
from gpt_ds.data.store.prepare import prepare
from gpt_ds.data.store import read_manifest, shard_paths, verify_store
from gpt_ds.data.tokenizer import load_tokenizer, train_tokenizer
from gpt_ds.errors import GptDsError

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no will more out up said what its "
         "about than into them can only other time new some could these two may first then do any like my now over "
         "such our man me even most made after also did many before must through back years where much your way "
         "well down should because each just those people how too little state good very make world still own see "
         "men work long get here between both life being under never day same another know while last might us great "
         "old year off come since against go came right used take three café naïve").split()


def make_docs(rng, n, max_sentences=12):
    docs = []
    for _ in range(n):
        sents = []
        for _ in range(int(rng.integers(1, max_sentences))):
            w = rng.choice(WORDS, size=int(rng.integers(3, 30)))
            sents.append(" ".join(w).capitalize() + rng.choice([".", "!", "?"]))
        docs.append(" ".join(sents))
    return docs


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    news = news_articles(tmp_path_factory.mktemp("news"), per_file=60, limit=60)
    return train_tokenizer(news, 500, tmp_path_factory.mktemp("tok") / "t", sample_docs=60)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same kind of documents in every input format; returns (paths, documents in store order)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("corpus")
    docs = {k: make_docs(rng, 12) for k in ("a_txt", "b_jsonl", "c_gz", "d_csv", "e_parquet", "f_hf")}
    (root / "a.txt").write_text("\n\n\n".join(d.replace(". ", ".\n", 1) for d in docs["a_txt"]) + "\n\n  \n\n")
    (root / "a2.txt").write_text(" \n\t\n")   # an empty document
    (root / "b.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs["b_jsonl"])))
    with gzip.open(root / "c.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs["c_gz"])
    import csv
    with open(root / "d.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([i, d] for i, d in enumerate(docs["d_csv"]))
    pq.write_table(pa.table({"text": docs["e_parquet"]}), root / "e.parquet")
    datasets.Dataset.from_dict({"text": docs["f_hf"]}).save_to_disk(str(root / "f_hf"))
    ordered = [d.replace(". ", ".\n", 1) for d in docs["a_txt"]] + docs["b_jsonl"] + docs["c_gz"] + docs["d_csv"] \
        + docs["e_parquet"] + docs["f_hf"]
    return root, ordered


def store_docs(store):
    m = read_manifest(store)
    out = []
    for i, e in enumerate(m["shards"]):
        p = shard_paths(store, i)
        toks = np.fromfile(p["tok"], dtype=m["dtype"])
        offs = np.fromfile(p["doc"], dtype="<u8").astype(np.int64)
        out += [toks[offs[j]:offs[j + 1]] for j in range(len(offs) - 1)]
    return out


def tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_and_manifest(corpus, tok_dir, tmp_path):
    root, docs = corpus
    m = prepare([str(root)], str(tok_dir), tmp_path / "s", workers=1, shard_size="4KB", seq_lens=(64,), quiet=True)
    tok = load_tokenizer(tok_dir)
    got = store_docs(tmp_path / "s")
    assert len(got) == len(docs) == m["totals"]["documents"]
    for ids, text in zip(got, docs):
        assert tok.decode(ids.tolist()) == " ".join(text.split())        # the normalized input, document by document
        assert ids.tolist() == tok(text, add_special_tokens=False)["input_ids"]
    assert m["totals"]["tokens"] == sum(len(g) for g in got) == sum(s["tokens"] for s in m["shards"])
    assert m["totals"]["shards"] == len(m["shards"]) > 3
    assert [s["format"] for s in m["sources"]] == ["txt", "txt", "jsonl", "jsonl", "csv", "parquet", "hf"]
    assert [s["documents"] for s in m["sources"]] == [12, 0, 12, 12, 12, 12, 12]
    assert [s["empty_documents"] for s in m["sources"]] == [0, 1, 0, 0, 0, 0, 0]
    assert m["skipped"]["empty_documents"] == 1
    assert m["dtype"] == "uint16" and m["tokenizer"]["fingerprint"]
    assert verify_store(tmp_path / "s") == []
    # a manifest whose counts were edited no longer verifies, though every file's checksum still matches
    edited = tmp_path / "edited"
    shutil.copytree(tmp_path / "s", edited)
    m2 = read_manifest(edited)
    m2["shards"][0]["tokens"] += 1
    (edited / "manifest.json").write_text(json.dumps(m2))
    problems = verify_store(edited)
    assert len(problems) == 1 and "the manifest says" in problems[0] and "tokens" in problems[0]


def test_byte_identical_across_workers_and_resumable(corpus, tok_dir, tmp_path, monkeypatch):
    root, _ = corpus
    kw = dict(shard_size="4KB", seq_lens=(64,), quiet=True)
    prepare([str(root)], str(tok_dir), tmp_path / "one", workers=1, **kw)
    prepare([str(root)], str(tok_dir), tmp_path / "two", workers=2, **kw)
    ref = tree_bytes(tmp_path / "one")
    assert ref == tree_bytes(tmp_path / "two")
    # interrupted after 3 shards, then re-run: finished shards are kept, the result is the same bytes
    from gpt_ds.data.store import writer as shards_mod
    real_close, calls = shards_mod.ShardWriter._close, []

    def crashing_close(self):
        real_close(self)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(shards_mod.ShardWriter, "_close", crashing_close)
    with pytest.raises(KeyboardInterrupt):
        prepare([str(root)], str(tok_dir), tmp_path / "r", workers=1, **kw)
    monkeypatch.setattr(shards_mod.ShardWriter, "_close", real_close)
    partial = tmp_path / "r.partial"
    assert json.loads((partial / "progress.json").read_text())["shards"].__len__() == 3
    first = shard_paths(partial, 0)["tok"].stat().st_mtime_ns
    prepare([str(root)], str(tok_dir), tmp_path / "r", workers=1, **kw)
    assert tree_bytes(tmp_path / "r") == ref
    assert shard_paths(tmp_path / "r", 0)["tok"].stat().st_mtime_ns == first   # not rewritten
    prepare([str(root)], str(tok_dir), tmp_path / "r", workers=1, **kw)          # up to date: nothing changes
    assert tree_bytes(tmp_path / "r") == ref
    with pytest.raises(GptDsError, match="other inputs"):
        prepare([str(root / "a.txt")], str(tok_dir), tmp_path / "r", workers=1, **kw)


@pytest.fixture(scope="module")
def store(corpus, tok_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("st") / "s"
    prepare([str(corpus[0])], str(tok_dir), out, workers=1, shard_size="4KB", seq_lens=(32, 64), quiet=True)
    return out


def _cfg(store, L, extra=()):
    return load_config("tiny", [f"data.sources=[{store}]", f"data.seq_len={L}", *extra])


@pytest.mark.parametrize("L", [32, 64])
def test_rows_cover_every_token_once(store, L):
    ds = open_dataset(_cfg(store, L))
    docs = store_docs(store)
    b = ds.batch(np.arange(len(ds)))
    ids, mask = b["input_ids"].numpy(), b["attention_mask"].numpy()
    assert ids.shape == (len(ds), L) and (ids[:, 0] == 2).all()
    real = ids[mask == 1]
    content = real[(real != 2) & (real != 3)]
    assert sorted(content.tolist()) == sorted(np.concatenate(docs).tolist())       # nothing dropped or repeated
    lens = mask.sum(1)
    assert (ids[np.arange(len(ids)), lens - 1] == 3).all()                     # every row ends with [SEP]
    rows = ds.rows(np.arange(len(ds)))[0]                                      # store order: the token stream
    stream = [t for r in rows for t in r.tolist() if t > 4]
    assert stream == np.concatenate(docs).tolist()


def test_two_segments_and_missing_index(store):
    from gpt_ds.data.store.index import build_index
    with pytest.raises(GptDsError, match="gpt-ds index"):
        open_dataset(_cfg(store, 48))
    build_index(store, 48, pairs=True)
    ds = open_dataset(_cfg(store, 48, ["data.two_segments=true"]))
    b = ds.batch(np.arange(40))
    for ids, types, mask in zip(b["input_ids"], b["token_type_ids"], b["attention_mask"]):
        n = int(mask.sum())
        seps = (ids[:n] == 3).nonzero().flatten().tolist()
        assert len(seps) >= 2 and seps[-1] == n - 1
        assert types[:seps[0] + 1].eq(0).all() and types[seps[0] + 1:n].eq(1).all() and types[n:].eq(0).all()


def test_damaged_shard_is_named(store, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    p = shard_paths(bad, 2)["tok"]
    data = bytearray(p.read_bytes())
    data[5] ^= 0xFF
    p.write_bytes(bytes(data))
    ds = open_dataset(_cfg(bad, 64))
    with pytest.raises(GptDsError, match="shard-000002.tok fails its checksum"):
        ds.batch(np.arange(len(ds)))
    assert verify_store(bad) == [str(p)]
    p.write_bytes(bytes(data[:-2]))
    with pytest.raises(GptDsError, match="shard-000002.tok has"):
        open_dataset(_cfg(bad, 64)).batch(np.arange(len(ds)))


def test_other_tokenizer_refused(store, corpus, tmp_path):
    other = train_tokenizer([str(corpus[0] / "a.txt")], 320, tmp_path / "other", sample_docs=20)
    with pytest.raises(GptDsError, match="another tokenizer"):
        open_dataset(_cfg(store, 64, [f"data.tokenizer={other}"]))
    ds = open_dataset(_cfg(store, 64))
    assert ds.tokenizer_dir == str(store / "tokenizer")
    assert load_tokenizer(ds.tokenizer_dir)("the man")["input_ids"][0] == 2


def test_cli_prepare_inspect_index(corpus, tok_dir, tmp_path, capsys):
    from gpt_ds.cli import main
    out = tmp_path / "cli"
    assert main(["prepare", "--input", str(corpus[0] / "b.jsonl"), "--tokenizer", str(tok_dir), "--out", str(out),
                 "--workers", "1", "--seq-len", "40", "--quiet"]) == 0
    made = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert made["documents"] == 12 and made["skipped"]["empty_documents"] == 0
    assert main(["index", str(out), "--seq-len", "72", "--workers", "1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] > 0
    assert main(["inspect", str(out), "--verify"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["documents"] == 12 and info["verified"] and len(info["indexes"]) == 2
    assert main(["inspect", str(tmp_path)]) == 2
    assert "not a token store" in capsys.readouterr().err
    assert main(["prepare", "--input", str(tmp_path / "missing.txt"), "--tokenizer", str(tok_dir),
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "missing.txt" in capsys.readouterr().err
