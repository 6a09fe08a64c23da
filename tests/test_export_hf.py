"""A run on real text with a trained tokenizer exports folders that plain transformers uses end to end."""
import json

import pytest

from test_train import FAST, gpt_ds, metrics

TEXT_RUN = [a for a in FAST if not a.startswith(("data.synthetic", "model.vocab_size"))]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    from demo.corpora import news_articles
    from gpt_ds.data.tokenizer import train_tokenizer
    root = tmp_path_factory.mktemp("text")
    corpus = news_articles(root / "corpus", per_file=100, limit=200)
    tok = train_tokenizer(corpus, 1000, root / "tok")
    run = root / "run"
    gpt_ds("pretrain", "tiny", *TEXT_RUN, f"run.dir={run}", f"data.sources=[{root / 'corpus'}]",
           f"data.tokenizer={tok}", "train.max_steps=2", "checkpoint.every=100")
    return root, run, tok


def test_export_loads_with_auto_classes_and_pipelines(text_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    root, run, _ = text_run
    out = tmp_path / "export"
    info = json.loads(gpt_ds("export", run, "--out", out, "--verify").stdout.strip().splitlines()[-1])
    assert info["tokenizer"] and info["verify_max_abs_diff"] <= 1e-5
    saved = json.loads((out / "gpt_ds_export.json").read_text())  # provenance travels with the folders
    assert saved["tokens_seen"] == 512 and saved["train_flops"] > 0 and saved["config"]["train"]["max_steps"] == 2
    assert saved["gpt_ds_version_exported"] and len(saved["tokenizer_fingerprint"]) >= 8
    assert list(saved["data_fingerprints"]) == [str(root / "corpus")]  # raw text: no store checksums to hash
    for part, cls in (("discriminator", "ElectraForPreTraining"), ("generator", "ElectraForMaskedLM")):
        card = (out / part / "README.md").read_text()  # the model card a downstream team reads first
        assert card.startswith("---\nlibrary_name: transformers") and f"({cls})" in card
        assert "Steps: 2 of 2, global batch 8 -> 512 tokens seen" in card and "gpt-ds finetune" in card
        assert "replaced-token AUC" in card  # the last logged metrics of the run
    for part in ("discriminator", "generator"):
        tok = AutoTokenizer.from_pretrained(out / part)
        ids = tok("The president said the economy is growing.")["input_ids"]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert tok.unk_token_id not in ids  # the BertTokenizerFast trap: every word [UNK]
    fill = pipeline("fill-mask", model=str(out / "generator"))
    guesses = fill(f"The president said the {fill.tokenizer.mask_token} is growing.", top_k=3)
    assert len(guesses) == 3 and all(0 <= g["score"] <= 1 for g in guesses)
    clf = AutoModelForSequenceClassification.from_pretrained(out / "discriminator", num_labels=2)
    batch = AutoTokenizer.from_pretrained(out / "discriminator")(["a good film", "a bad film"], return_tensors="pt",
                                                                 padding=True)
    assert clf(**batch).logits.shape == (2, 2)
    # a text longer than the model's positions: truncation stops at them (the tokenizer's default 512 would crash)
    for part in ("discriminator", "generator"):
        positions = json.loads((out / part / "config.json").read_text())["max_position_embeddings"]
        assert AutoTokenizer.from_pretrained(out / part).model_max_length == positions
        assert (out / part / "model.safetensors").stat().st_mode & 0o044 == 0o044  # group/other may read it
    clf.save_pretrained(tmp_path / "clf")
    AutoTokenizer.from_pretrained(out / "discriminator").save_pretrained(tmp_path / "clf")
    long_text = " ".join(["the economy is growing and the president said so"] * 250)
    assert pipeline("text-classification", model=str(tmp_path / "clf"), truncation=True)(long_text)[0]["score"] > 0


def test_resume_with_another_tokenizer_is_refused(text_run, tmp_path):
    from gpt_ds.data.tokenizer import train_tokenizer
    root, run, _ = text_run
    other = train_tokenizer(list((root / "corpus").iterdir()), 900, tmp_path / "tok900")
    p = gpt_ds("pretrain", "tiny", *TEXT_RUN, f"run.dir={run}", f"data.sources=[{root / 'corpus'}]",
               f"data.tokenizer={other}", "train.max_steps=4", "model.vocab_size=1000", check=False, timeout=120)
    assert p.returncode == 2 and "another tokenizer" in p.stderr and "Traceback" not in p.stderr
    assert [r["step"] for r in metrics(run)] == [1, 2]


def test_empty_corpus_is_refused(text_run, tmp_path):
    tok = text_run[2]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("\n\n   \n")
    p = gpt_ds("pretrain", "tiny", *TEXT_RUN, f"run.dir={tmp_path / 'r'}", f"data.sources=[{tmp_path / 'empty'}]",
               f"data.tokenizer={tok}", check=False, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert str(tmp_path / "empty") in p.stderr or "a.txt" in p.stderr


def test_a_run_folder_is_self_contained_and_exports_from_anywhere(text_run, tmp_path):
    import shutil
    root, _, tok = text_run
    start = tmp_path / "start"  # training starts here, with a relative tokenizer path
    start.mkdir()
    shutil.copytree(tok, start / "tok")
    gpt_ds("pretrain", "tiny", *TEXT_RUN, "run.dir=run", f"data.sources=[{root / 'corpus'}]", "data.tokenizer=tok",
           "train.max_steps=2", "checkpoint.every=100", cwd=start)
    run = start / "run"
    assert (run / "tokenizer" / "tokenizer_config.json").is_file() and (run / "config.yaml").is_file()
    for engine in ("generator", "discriminator"):
        ds = json.loads((run / f"ds_config.{engine}.json").read_text())
        assert ds["train_batch_size"] == 8 and ds["zero_optimization"]["stage"] == 3  # what DeepSpeed received
    moved = tmp_path / "other_machine" / "run"  # the folder copied elsewhere; the original tokenizer gone
    shutil.copytree(run, moved)
    shutil.rmtree(start)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    info = json.loads(gpt_ds("export", moved, "--out", "out", cwd=elsewhere).stdout.strip().splitlines()[-1])
    assert info["tokenizer"] and (elsewhere / "out" / "discriminator" / "tokenizer_config.json").is_file()
    shutil.rmtree(moved / "tokenizer")
    p = gpt_ds("export", moved, "--out", "out2", cwd=elsewhere, check=False)
    assert p.returncode == 2 and "--tokenizer" in p.stderr and "Traceback" not in p.stderr
    gpt_ds("export", moved, "--out", "out3", "--tokenizer", tok, cwd=elsewhere)
    assert (elsewhere / "out3" / "generator" / "tokenizer.json").is_file()


def test_a_corpus_smaller_than_one_global_batch_is_refused(text_run, tmp_path):
    tok = text_run[2]
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "a.txt").write_text("The president said the economy is growing.\n\nMarkets rose on Monday.\n")
    p = gpt_ds("pretrain", "tiny", *TEXT_RUN, f"run.dir={tmp_path / 'r'}", f"data.sources=[{tmp_path / 'small'}]",
               f"data.tokenizer={tok}", "--nproc", "2", check=False, timeout=180)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.count("fewer than one global batch (8)") == 1, p.stderr[-2000:]  # once for the job, not per rank
