"""`gpt-ds finetune`: learns a task, uses pairs, layer-wise decay, metrics against hand computation, one and two
processes under accelerate giving the same result, the saved model in a plain pipeline, and bad input refused."""
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch

from test_train import ROOT, gpt_ds

POS, NEG = ["good", "great", "fine"], ["bad", "awful", "poor"]
FILLER = [f"w{i}" for i in range(30)]


def sentence(rng: random.Random, keyword: str) -> str:
    words = rng.sample(FILLER, rng.randint(3, 7))
    words.insert(rng.randrange(len(words) + 1), keyword)
    return " ".join(words)


def write_task(folder, n_train=320, n_eval=50, pairs=False, seed=0):
    """Label = the sentiment keyword's class; with pairs the keyword is only in the second text."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
        rows = []
        for i in range(n):
            label = "pos" if i % 2 == 0 else "neg"
            key = rng.choice(POS if label == "pos" else NEG)
            if pairs:
                rows.append({"a": " ".join(rng.sample(FILLER, 4)), "b": sentence(rng, key), "y": label})
            else:
                rows.append({"text": sentence(rng, key), "label": label})
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small stock ElectraForPreTraining folder (dropout off, so runs on 1 and 2 processes can agree) with a
    word-level tokenizer that puts [CLS] ... [SEP] ... [SEP] around texts and pairs."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import ElectraConfig, ElectraForPreTraining, PreTrainedTokenizerFast
    out = tmp_path_factory.mktemp("model") / "discriminator"
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POS + NEG + FILLER)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)
    torch.manual_seed(0)
    config = ElectraConfig(vocab_size=len(vocab), embedding_size=32, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    ElectraForPreTraining(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out


RECIPE = ["--lr", "2e-3", "--epochs", "6", "--batch-size", "16", "--layer-decay", "0.9", "--seeds", "2"]


def last_json(p) -> dict:
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_learns_a_task_and_saves_a_model_a_pipeline_uses(model_dir, tmp_path):
    from transformers import pipeline
    paths = write_task(tmp_path / "task")
    out = tmp_path / "ft"
    p = gpt_ds("finetune", model_dir, "--train", paths["train"], "--validation", paths["validation"], "--test",
               paths["test"], "--out", out, *RECIPE)
    r = last_json(p)
    assert r["labels"] == ["neg", "pos"] and len(r["seeds"]) == 2
    assert r["median"]["test"]["accuracy"] >= 0.9, r["median"]
    for seed in r["seeds"]:
        assert seed["validation"]["examples"] == 50 and seed["test"]["examples"] == 50
        assert set(seed["test"]) >= {"accuracy", "macro_f1", "mcc"}
    assert "median over 2 seeds, test" in p.stderr
    saved = json.loads((out / "results.json").read_text())
    assert saved["best_seed"] in (1, 2) and not (tmp_path / "ft.tmp").exists()
    clf = pipeline("text-classification", model=str(out), tokenizer=str(out))
    assert clf("w1 w2 great w3")[0]["label"] == "pos" and clf("w4 awful w5")[0]["label"] == "neg"


def test_random_init_control_does_not_read_the_weights(model_dir, tmp_path):
    """Random init must ignore the folder's weights: corrupting them changes nothing for the control."""
    from transformers import ElectraForPreTraining
    paths = write_task(tmp_path / "task", n_train=64, n_eval=20)
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    m = ElectraForPreTraining.from_pretrained(broken)
    with torch.no_grad():
        for w in m.parameters():
            w.fill_(3.0)
    m.save_pretrained(broken)
    args = ["--train", paths["train"], "--validation", paths["validation"], "--epochs", "1", "--seeds", "1",
            "--no-save", "--random-init"]
    a = last_json(gpt_ds("finetune", model_dir, *args))
    b = last_json(gpt_ds("finetune", broken, *args))
    assert a["random_init"] and a["seeds"][0]["validation"] == b["seeds"][0]["validation"]
    c = last_json(gpt_ds("finetune", broken, *args[:-1]))  # pretrained: the broken weights do matter
    assert c["seeds"][0]["validation"]["accuracy"] <= 0.6


def test_sentence_pairs_reach_the_second_text(model_dir, tmp_path):
    paths = write_task(tmp_path / "pairs", pairs=True)
    args = ["--train", paths["train"], "--test", paths["test"], "--text-field", "a", "--label-field", "y", *RECIPE,
            "--no-save"]
    with_pair = last_json(gpt_ds("finetune", model_dir, *args, "--text-pair-field", "b"))
    first_only = last_json(gpt_ds("finetune", model_dir, *args))
    assert with_pair["median"]["test"]["accuracy"] >= 0.9
    assert first_only["median"]["test"]["accuracy"] <= 0.7  # the keyword is only in the second text
    assert with_pair["data"]["validation"]["examples"] == 32  # 10% of train carved out when no --validation


def test_two_processes_under_accelerate_match_one(model_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on a machine without a GPU: the global batch is split, gradients all-reduced; with dropout
    off the result is the single process's. Evaluation counts every example once (51 is not a multiple of 2)."""
    paths = write_task(tmp_path / "task", n_train=160, n_eval=51)
    args = ["finetune", str(model_dir), "--train", str(paths["train"]), "--validation", str(paths["validation"]),
            "--test", str(paths["test"]), "--lr", "2e-3", "--epochs", "3", "--batch-size", "16", "--seeds", "1"]
    one = last_json(gpt_ds(*args, "--out", tmp_path / "one"))
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "-m", "gpt_ds.cli", *args, "--out", str(tmp_path / "two")],
                       env=env, cwd=ROOT, text=True, capture_output=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    two = last_json(p)
    assert two["recipe"]["processes"] == 2 and one["recipe"]["processes"] == 1
    for split in ("validation", "test"):
        assert two["seeds"][0][split]["examples"] == 51
        assert two["seeds"][0][split]["accuracy"] == pytest.approx(one["seeds"][0][split]["accuracy"], abs=0.03)
    from safetensors.torch import load_file
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-3


def test_layerwise_decay_lr_per_depth(model_dir):
    from transformers import AutoModelForSequenceClassification

    from gpt_ds.finetune.run import layerwise_groups
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    groups = layerwise_groups(model, 1.0, 0.5, 0.01)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["classifier.out_proj.weight"])] == (1.0, 0.01)
    assert lr_of[id(named["electra.encoder.layer.1.output.dense.weight"])] == (0.5, 0.01)
    assert lr_of[id(named["electra.encoder.layer.0.output.dense.weight"])] == (0.25, 0.01)
    assert lr_of[id(named["electra.embeddings.word_embeddings.weight"])] == (0.125, 0.01)
    assert lr_of[id(named["electra.embeddings.LayerNorm.weight"])] == (0.125, 0.0)
    assert lr_of[id(named["electra.encoder.layer.1.output.dense.bias"])] == (0.5, 0.0)
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_metrics_against_hand_computation():
    from gpt_ds.finetune.metrics import classification_metrics, median_over_seeds
    y = [0, 0, 0, 0, 1, 1, 2, 2]
    p = [0, 0, 1, 0, 1, 2, 2, 2]
    m = classification_metrics(y, p, 3)
    assert m["accuracy"] == pytest.approx(6 / 8)
    f1 = [2 * 3 / (2 * 3 + 0 + 1), 2 * 1 / (2 * 1 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 0)]  # 2TP / (2TP + FP + FN)
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    # MCC, multiclass (Gorodkin): (c*s - sum_k p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2))
    c, s, pk, tk = 6, 8, [3, 2, 3], [4, 2, 2]
    num = c * s - sum(a * b for a, b in zip(pk, tk))
    den = ((s * s - sum(a * a for a in pk)) * (s * s - sum(b * b for b in tk))) ** 0.5
    assert m["mcc"] == pytest.approx(num / den)
    seeds = [{"test": {"accuracy": a, "macro_f1": 0.0, "mcc": 0.0}} for a in (0.2, 0.9, 0.5)]
    assert median_over_seeds(seeds, "test")["accuracy"] == 0.5


def _bad(model_dir, tmp_path, *args):
    p = gpt_ds("finetune", model_dir, *args, "--no-save", check=False, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    return lines[-1]


def test_bad_input_gets_one_line_naming_file_and_field(model_dir, tmp_path):
    paths = write_task(tmp_path / "task", n_train=40, n_eval=10)
    msg = _bad(model_dir, tmp_path, "--train", paths["train"], "--text-field", "sentence")
    assert str(paths["train"]) in msg and "'sentence'" in msg and "text" in msg
    msg = _bad(model_dir, tmp_path, "--train", paths["train"], "--label-field", "labl")
    assert "did you mean 'label'" in msg
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"text": "w1 good", "label": "neutral"}) + "\n")
    msg = _bad(model_dir, tmp_path, "--train", paths["train"], "--test", test)
    assert str(test) in msg and "neutral" in msg and "training split never has" in msg
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    msg = _bad(model_dir, tmp_path, "--train", empty)
    assert str(empty) in msg and "empty" in msg
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    assert "no rows" in _bad(model_dir, tmp_path, "--train", header_only)
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    shutil.copy(model_dir / "config.json", no_tok)
    shutil.copy(model_dir / "model.safetensors", no_tok)
    msg = _bad(no_tok, tmp_path, "--train", paths["train"])
    assert str(no_tok) in msg and "tokenizer" in msg
    msg = _bad(model_dir, tmp_path, "--train", tmp_path / "nope.jsonl")
    assert "nope.jsonl" in msg and "no such file" in msg
    assert "--lr" in _bad(model_dir, tmp_path, "--train", paths["train"], "--lr", "-1")
    assert "--epochs 10,0" in _bad(model_dir, tmp_path, "--train", paths["train"], "--epochs", "10,0")


def test_rows_without_label_are_counted_and_formats_agree(model_dir, tmp_path):
    """jsonl, csv, parquet and a save_to_disk DatasetDict give the same rows; empty labels are skipped and counted."""
    import datasets
    rows = [{"text": "w1 good w2", "label": "pos"}, {"text": "w3 bad", "label": "neg"}, {"text": "w4", "label": None},
            {"text": "w5 fine", "label": "pos"}, {"text": "w6 poor w7", "label": "neg"}] * 4
    ds = datasets.Dataset.from_list(rows)
    ds.to_json(tmp_path / "t.jsonl")
    ds.to_csv(tmp_path / "t.csv", index=False)
    ds.to_parquet(tmp_path / "t.parquet")
    datasets.DatasetDict({"train": ds, "validation": ds}).save_to_disk(tmp_path / "saved")
    results = []
    for f in ("t.jsonl", "t.csv", "t.parquet", "saved"):
        p = gpt_ds("finetune", model_dir, "--train", tmp_path / f, "--epochs", "1", "--seeds", "1", "--no-save",
                   "--validation-fraction", "0.25")
        r = last_json(p)
        assert r["data"]["train"]["skipped"] == 4 and "skipped 4 rows" in p.stderr
        results.append((r["labels"], r["data"]["train"]["examples"] + r["data"]["validation"]["examples"]))
    assert results[0] == (["neg", "pos"], 16)
    assert all(x == results[0] for x in results[1:3])
    assert results[3][0] == ["neg", "pos"]  # the DatasetDict's own validation split is used when none is given


@pytest.mark.parametrize("name", ["sms-spam", "question-type", "movie-sentiment"])
def test_labeled_tasks_are_deduplicated_disjoint_and_fixed(name, tmp_path):
    from demo.corpora import labeled_task
    paths = labeled_task(name, tmp_path)
    texts = {s: [json.loads(line)["text"] for line in p.read_text().splitlines()] for s, p in paths.items()}
    every = sum(texts.values(), [])
    assert len(every) == len(set(every)) > 1000  # deduplicated, so no sentence is in two splits
    assert abs(len(texts["validation"]) - len(texts["test"])) <= 1 and len(texts["train"]) > 7 * len(texts["test"])
    labels = {json.loads(line)["label"] for line in paths["train"].read_text().splitlines()}
    assert labels == {"sms-spam": {"ham", "spam"}, "question-type": {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"},
                      "movie-sentiment": {"negative", "positive"}}[name]
    before = {s: p.read_bytes() for s, p in paths.items()}
    assert {s: p.read_bytes() for s, p in labeled_task(name, tmp_path).items()} == before


def test_train_rows_is_a_fixed_subset_for_every_model_and_seed(tmp_path):
    """--train-rows: the label-scarce setting; the same rows whatever the model or fine-tuning seed."""
    from gpt_ds.finetune.data import load_task
    rows = [{"text": f"w{i} {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"} for i in range(50)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = load_task({"train": str(path)}, "text", None, "label", validation_fraction=0.2, train_rows=12)
    b = load_task({"train": str(path)}, "text", None, "label", validation_fraction=0.2, train_rows=12)
    full = load_task({"train": str(path)}, "text", None, "label", validation_fraction=0.2)
    assert len(a.splits["train"].texts) == 12 and a.splits["train"].texts == b.splits["train"].texts
    assert set(a.splits["train"].texts) < set(full.splits["train"].texts)  # drawn from the training share only
    assert a.splits["validation"].texts == full.splits["validation"].texts  # selection split untouched
    assert load_task({"train": str(path)}, "text", None, "label", validation_fraction=0.2,
                     train_rows=500).splits["train"].texts == full.splits["train"].texts


def test_a_learning_rate_search_picks_on_validation_and_matches_single_runs(model_dir, tmp_path):
    """--lr a,b runs every seed at each rate and reports the one with the best median validation score; its figures
    are exactly those of a run given that rate alone (the search adds nothing but the choice)."""
    paths = write_task(tmp_path / "task", n_train=160, n_eval=40)
    args = ["--train", paths["train"], "--validation", paths["validation"], "--test", paths["test"], "--epochs", "5",
            "--batch-size", "16", "--seeds", "2", "--no-save"]
    both = last_json(gpt_ds("finetune", model_dir, *args, "--lr", "1e-6,3e-3"))
    assert [(r["lr"], r["epochs"]) for r in both["search"]] == [(1e-6, 5.0), (3e-3, 5.0)]
    val = {r["lr"]: r["median"]["validation"]["accuracy"] for r in both["search"]}
    assert val[3e-3] > val[1e-6], val  # 1e-6 cannot learn the task in 50 steps; 3e-3 can
    assert both["recipe"]["lr"] == 3e-3
    alone = last_json(gpt_ds("finetune", model_dir, *args, "--lr", "3e-3"))
    assert "search" not in alone and alone["recipe"]["lr"] == 3e-3
    assert both["seeds"] == [dict(s, train_seconds=b["train_seconds"]) for s, b in zip(alone["seeds"], both["seeds"])]
    assert both["median"] == alone["median"]


def test_an_epoch_search_runs_each_length_as_its_own_schedule_and_picks_on_validation(model_dir, tmp_path):
    """--epochs a,b: each length is a run of its own (warmup and decay spread over its own steps), chosen on
    validation like a rate; the chosen length's figures are those of a run given it alone."""
    paths = write_task(tmp_path / "task", n_train=160, n_eval=40)
    args = ["--train", paths["train"], "--validation", paths["validation"], "--test", paths["test"], "--lr", "3e-3",
            "--batch-size", "16", "--seeds", "1"]
    # the 5-epoch setting runs first and leads, then the 0.2-epoch one must not displace its kept weights
    grid = last_json(gpt_ds("finetune", model_dir, *args, "--epochs", "5,0.2", "--out", tmp_path / "best"))
    by_length = {r["epochs"]: r["median"]["validation"]["accuracy"] for r in grid["search"]}
    assert sorted(by_length) == [0.2, 5.0]
    assert by_length[5.0] > by_length[0.2], by_length  # 2 steps cannot learn the task; 50 can
    assert grid["recipe"]["epochs"] == 5.0 and grid["seeds"][0]["steps"] == 50
    saved = json.loads((tmp_path / "best" / "results.json").read_text())
    assert saved["recipe"]["epochs"] == 5.0
    # the kept weights are the 5-epoch run's: they score its validation accuracy, not the 2-step run's
    from transformers import pipeline
    clf = pipeline("text-classification", model=str(tmp_path / "best"), tokenizer=str(tmp_path / "best"))
    rows = [json.loads(x) for x in paths["validation"].read_text().splitlines()]
    kept = sum(p["label"] == r["label"] for p, r in zip(clf([r["text"] for r in rows]), rows)) / len(rows)
    assert kept == pytest.approx(by_length[5.0], abs=1.5 / len(rows)), (kept, by_length)
    alone = last_json(gpt_ds("finetune", model_dir, *args, "--epochs", "5", "--no-save"))
    assert "search" not in alone and alone["recipe"]["epochs"] == 5.0
    assert grid["seeds"] == [dict(s, train_seconds=g["train_seconds"]) for s, g in zip(alone["seeds"], grid["seeds"])]


def test_roberta_style_position_tables_lose_their_offset():
    """MPNet / RoBERTa number positions from pad id + 1: a 130-row table holds 128 tokens, ELECTRA's all 128 rows.
    Without this a long text indexes past the table inside the model."""
    from transformers import ElectraConfig, MPNetConfig, RobertaConfig
    from gpt_ds.finetune.run import usable_positions
    assert usable_positions(MPNetConfig(max_position_embeddings=130, pad_token_id=1)) == 128
    assert usable_positions(MPNetConfig(max_position_embeddings=130, pad_token_id=0)) == 128  # MPNet: index 1 always
    assert usable_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert usable_positions(ElectraConfig(max_position_embeddings=128, pad_token_id=0)) == 128
