"""Tokenizer: SentencePiece -> Hugging Face fast tokenizer folder with the ELECTRA special tokens."""
import json

import pytest

from demo.corpora import news_articles
from gpt_ds.data.tokenizer import (TokenizerInfo, load_tokenizer, sentence_end_table, special_ids,
                                   tokenizer_fingerprint, tokenizer_info, train_tokenizer, vocab_size_of)
from gpt_ds.errors import GptDsError


@pytest.fixture(scope="module")
def news(tmp_path_factory):
    return news_articles(tmp_path_factory.mktemp("news"), per_file=100, limit=300)


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def tok_dir(request, news, tmp_path_factory):
    return train_tokenizer(news, 1200, tmp_path_factory.mktemp("tok") / request.param, model=request.param,
                           sample_docs=300)


def test_autotokenizer_loads_fast_with_specials(tok_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert tok.is_fast
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == [0, 1, 2, 3, 4]
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ids = tok("The president said that the government will vote on Tuesday.")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3
    assert 1 not in ids, "common words must not be [UNK] (the BertTokenizerFast trap)"
    assert all(i > 4 for i in ids[1:-1])
    pair = tok("first part", "second part")
    assert pair["input_ids"].count(3) == 2 and pair["token_type_ids"][-1] == 1 and pair["token_type_ids"][0] == 0
    # byte fallback: characters never seen in training still decode to themselves
    text = "Zoë's café costs 5€ — naïve ☃"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    assert 1 not in tok(text)["input_ids"]
    assert tok("a [MASK] b")["input_ids"].count(4) == 1
    assert vocab_size_of(tok) == 1200 == len(tok)


def test_fill_mask_pipeline_uses_mask_token(tok_dir):
    import torch
    from transformers import ElectraConfig, ElectraForMaskedLM, pipeline
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    model = ElectraForMaskedLM(ElectraConfig(vocab_size=len(tok), embedding_size=16, hidden_size=16,
                                             num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    fill = pipeline("fill-mask", model=model, tokenizer=tok)
    out = fill("The president said [MASK] would vote.", top_k=3)
    assert len(out) == 3 and all("[MASK]" not in o["sequence"] for o in out)


def test_fingerprint_and_metadata(tok_dir, tmp_path):
    tok = load_tokenizer(tok_dir)
    fp = tokenizer_fingerprint(tok)
    assert fp == tokenizer_fingerprint(load_tokenizer(tok_dir)) and len(fp) == 16
    light = tokenizer_info(tok_dir)         # the transformers-free reader used by prepare gives the same identity
    assert isinstance(light, TokenizerInfo)
    assert tokenizer_fingerprint(light) == fp and special_ids(light) == special_ids(tok)
    assert (sentence_end_table(light) == sentence_end_table(tok)).all()
    meta = json.loads((tok_dir / "gpt_ds_tokenizer.json").read_text())
    assert meta["sample_docs"] == 300
    ends = sentence_end_table(tok)
    assert ends[tok.convert_tokens_to_ids(".")] or ends[tok.convert_tokens_to_ids("▁.")]
    assert not ends[2:5].any()


def test_same_inputs_same_tokenizer_other_inputs_refused(news, tok_dir, tmp_path):
    model = tok_dir.name
    a = train_tokenizer(news[:1], 600, tmp_path / "a", model=model, sample_docs=50)
    b = train_tokenizer(news[:1], 600, tmp_path / "b", model=model, sample_docs=50)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    with pytest.raises(GptDsError, match="already exists"):
        train_tokenizer(news[:1], 600, tmp_path / "a", model=model, sample_docs=50)
    with pytest.raises(GptDsError, match="too small"):
        train_tokenizer(news[:1], 100, tmp_path / "c", model=model)
    with pytest.raises(GptDsError, match="does not exist"):
        train_tokenizer([str(tmp_path / "nope.txt")], 600, tmp_path / "d", model=model)


def test_cli_train(news, tmp_path, capsys):
    from gpt_ds.cli import main
    rc = main(["tokenizer", "train", "--input", str(news[0]), "--vocab-size", "500", "--out", str(tmp_path / "t"),
               "--sample-docs", "40"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["vocab_size"] == 500
    assert main(["tokenizer", "train", "--input", str(news[0]), "--vocab-size", "500", "--out",
                 str(tmp_path / "t")]) == 2
