"""open_dataset on text sources (tokenized at open time) and on weighted blends; the encoder engines agree."""
import zlib

import numpy as np
import pytest

from gpt_ds.config import load_config
from gpt_ds.data import RowDataset
from gpt_ds.data.sources import open_dataset
from demo.corpora import news_articles
from gpt_ds.data.encode import CHECK_EVERY, Encoder
from gpt_ds.data.store.prepare import prepare
from gpt_ds.data.tokenizer import load_tokenizer, train_tokenizer
from gpt_ds.errors import GptDsError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    news = news_articles(root / "news", per_file=30, limit=90)
    tok = train_tokenizer(news, 600, root / "tok", sample_docs=90)
    return root, news, tok


def test_text_source_rows(setup):
    root, news, tok_dir = setup
    cfg = load_config("tiny", [f"data.sources=[{root / 'news'}]", f"data.tokenizer={tok_dir}", "data.seq_len=64"])
    ds = open_dataset(cfg)
    assert isinstance(ds, RowDataset)
    assert (ds.vocab_size, ds.pad_id, ds.cls_id, ds.sep_id, ds.mask_id) == (600, 0, 2, 3, 4)
    assert ds.tokenizer_dir == str(tok_dir) and len(ds.tokenizer_fingerprint) == 16
    b = ds.batch(np.arange(len(ds)))
    ids, mask = b["input_ids"].numpy(), b["attention_mask"].numpy()
    tok = load_tokenizer(tok_dir)
    docs = [d for f in news for d in f.read_text().split("\n\n") if d.strip()]
    want = sorted(t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"])
    real = ids[mask == 1]
    assert sorted(real[real > 4].tolist()) == want             # every token of every document, once
    assert (mask.sum(1) <= 64).all() and (ids[:, 0] == 2).all()
    assert (ids[mask == 0] == 0).all()
    with pytest.raises(GptDsError, match="data.tokenizer"):
        open_dataset(load_config("tiny", [f"data.sources=[{root / 'news'}]"]))


def test_blend_of_store_and_text_from_config(setup):
    root, news, tok_dir = setup
    prepare([str(news[0])], str(tok_dir), root / "store", workers=1, seq_lens=(64,), quiet=True)
    cfg = load_config("tiny", ["data.seq_len=64", f"data.tokenizer={tok_dir}"],
                      raw={"data": {"sources": [{"path": str(root / "store"), "weight": 3.0},
                                                {"path": str(news[2]), "weight": 1.0}]}})
    ds = open_dataset(cfg)
    src = ds.source_of(np.arange(8000))
    assert abs((src == 0).mean() - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 8000)
    b1 = ds.batch(np.arange(100, 164))
    assert np.array_equal(b1["input_ids"].numpy(), ds.batch(np.arange(100, 164))["input_ids"].numpy())
    assert len(ds) >= len(ds.parts[0]) and ds.tokenizer_fingerprint == ds.parts[1].tokenizer_fingerprint


def test_spm_engine_matches_hf_and_stops_on_a_difference(setup, monkeypatch):
    root, news, tok_dir = setup
    texts = [d for d in news[1].read_text().split("\n\n")] + ["Zoë ☃ ﬁ \t tabs   and  spaces", "", "x" * 3000]
    spm, hf = Encoder(tok_dir), Encoder(tok_dir, engine="hf")
    assert (spm.engine, hf.engine) == ("spm", "hf")
    assert spm.encode_lists(texts) == hf.encode_lists(texts)
    s1, l1 = spm.encode_flat(texts)
    assert s1.dtype == np.uint32 and l1.sum() == len(s1)
    real = spm.sp.encode

    def wrong(texts, **kw):
        out = real(texts, **kw)
        return [o[:-1] + [7] if o else o for o in out]
    monkeypatch.setattr(spm.sp, "encode", wrong)
    many = [f"{i} {t}" for i, t in enumerate(texts * 10)]
    assert any(zlib.crc32(t[:256].encode()) % CHECK_EVERY == 0 for t in many)   # some are spot-checked
    with pytest.raises(GptDsError, match="--encoder hf"):
        spm.encode_lists(many)
