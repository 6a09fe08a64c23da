"""model.arch=mpnet: both towers stock transformers MPNet, held to plain MPNet computations on the same weights, and a
run that exports folders plain transformers and `gpt-ds finetune` use."""
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import MPNetConfig, MPNetForMaskedLM
from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

from gpt_ds.config import ConfigError, load_config
from gpt_ds.kernels.noise import gumbel_noise
from gpt_ds.model.relative_bias import local_bias_
from test_model import SPECIALS, V, do_mask, rows
from test_train import FAST, gpt_ds

SMALL = ["model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64", "model.num_layers=2",
         "model.generator_layers=1", "model.hidden_dropout=0", "model.attention_dropout=0", "data.seq_len=24",
         "model.kernels=reference"]


def mpnet_cfg(*over):
    return load_config("tiny-mpnet", [*SMALL, *over])


def test_config_refuses_what_mpnet_towers_cannot_do():
    cfg = load_config("tiny-mpnet", [])
    assert cfg.model.arch == "mpnet" and cfg.model.generator_hidden_ratio == 1 and cfg.model.generator_layers == 2
    for override, named in (("model.generator_hidden_ratio=0.5", "model.generator_layers"),
                            ("data.two_segments=true", "data.two_segments"),
                            ("train.activation_checkpointing=true", "train.activation_checkpointing")):
        with pytest.raises(ConfigError, match=named):
            load_config("tiny-mpnet", [override])
    # without GDES the generator may be narrower: nothing is shared
    load_config("tiny-mpnet", ["model.generator_hidden_ratio=0.5", "objective.embedding_sharing=none"])


def stock_mpnet_logits(gen, masked_ids: torch.Tensor, att: torch.Tensor):
    """A gpt_ds MPNet generator's weights in a stock MPNetForMaskedLM, given the positions gpt_ds gives (from 2):
    (logits over every position, flattened; those positions)."""
    hf = MPNetForMaskedLM(gen.mlm.config).eval()
    hf.load_state_dict(gen.mlm.state_dict())
    pos = torch.arange(2, 2 + masked_ids.shape[1])[None].expand_as(masked_ids)
    return hf(masked_ids, attention_mask=att, position_ids=pos).logits.reshape(-1, V), pos


def test_local_bias_follows_mpnets_buckets_and_favours_near_positions():
    """Every relative distance gets about -slope * distance through MPNet's own bucketing (exact for near distances,
    never more than one bucket's span too small far away), the same both ways; so a softmax over the bias alone puts
    most weight within a few positions."""
    cfg = MPNetConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    enc = MPNetEncoder(cfg)
    local_bias_(enc.relative_attention_bias, slopes=(1.0, 0.25))
    bias = enc.compute_position_bias(torch.zeros(1, 128, 16))[0]  # (heads, L, L), through MPNet's own bucketing
    i, j = torch.arange(128)[:, None], torch.arange(128)[None, :]
    dist = (i - j).abs().float()
    for h, slope in enumerate((1.0, 0.25)):
        near = dist < 8
        assert torch.allclose(bias[h][near], -slope * dist[near])
        far = ~near
        assert (bias[h][far] >= -slope * dist[far] - 1e-4).all()  # a bucket stands for its smallest distance
        assert (bias[h][far] <= -slope * 8 + 1e-4).all()
        assert torch.equal(bias[h], bias[h].T)  # both directions alike
    probs = bias.softmax(-1)
    assert probs[0][dist <= 2].sum() / 128 > 0.9  # slope 1: nearly all weight within two positions
    assert probs[1][dist <= 8].sum() / 128 > 0.6


def test_towers_match_plain_mpnet_and_gdes_merges_into_a_stock_encoder():
    from gpt_ds.model.discriminator import MPNetForReplacedTokenDetection
    from gpt_ds.train.engines import build_models
    cfg = mpnet_cfg()
    gen, disc = build_models(cfg, V, SPECIALS["pad"], seed=0)
    gen.eval(), disc.eval()
    assert gen.mpnet and disc.mpnet and gen.mlm.config.num_hidden_layers == 1 and disc.pt.config.num_hidden_layers == 2
    expected = torch.nn.Embedding(32, 2)
    local_bias_(expected)
    for tower in (gen, disc):  # relative_bias_init=local in both towers
        assert torch.equal(tower.backbone.encoder.relative_attention_bias.weight, expected.weight)
    emb = disc.backbone.embeddings  # GDES: the discriminator's tables start as zero deltas
    assert emb.word_embeddings.weight.abs().sum() == 0 and emb.position_embeddings.weight.abs().sum() == 0

    ids, att = rows(5, pad_tail=3)
    ids[1, 5] = SPECIALS["unk"]  # an [UNK] (id 1, MPNet's padding index): gpt_ds gives positions explicitly
    tt = torch.zeros_like(ids)
    mk = do_mask(ids, att, torch.arange(5))
    out = gen(mk.masked_ids, att, tt, mk.positions, mk.targets, mk.row_ids, ids, 5)
    logits, pos = stock_mpnet_logits(gen, mk.masked_ids, att)
    logits = logits[mk.positions]
    assert torch.allclose(out.loss, F.cross_entropy(logits, mk.targets), atol=1e-6)
    z = logits / cfg.objective.temperature + gumbel_noise(5, mk.row_ids, torch.arange(V))
    assert torch.equal(out.sampled, z.argmax(-1))

    labels = (out.corrupted_ids != ids).long()
    with torch.no_grad():  # non-zero deltas, so the merge below is tested
        emb.word_embeddings.weight.normal_(0, 0.02)
        emb.position_embeddings.weight.normal_(0, 0.02)
        d = disc(out.corrupted_ids, att, tt, labels, out.base_embeds)
    merged = MPNetForReplacedTokenDetection(disc.pt.config).eval()
    sd = disc.pt.state_dict()
    ge = gen.backbone.embeddings
    for table in ("word_embeddings", "position_embeddings"):
        sd[f"mpnet.embeddings.{table}.weight"] = sd[f"mpnet.embeddings.{table}.weight"] + getattr(ge, table).weight
    merged.load_state_dict(sd)
    with torch.no_grad():
        ref = merged(out.corrupted_ids, attention_mask=att, position_ids=pos).logits
    assert torch.allclose(d.logits, ref[att.bool()], atol=1e-5)
    assert torch.allclose(d.loss, F.binary_cross_entropy_with_logits(ref[att.bool()], labels[att.bool()].float()),
                          atol=1e-6)


def test_estimator_counts_the_towers_the_engines_build():
    from gpt_ds.train.engines import build_models
    from gpt_ds.zero.sizes import towers
    for corrective in ("0", "1"):  # the corrective LM's head (at the hidden width) counted when it is on
        cfg = mpnet_cfg(f"objective.disc_mlm_weight={corrective}")
        gen, disc = build_models(cfg, V, SPECIALS["pad"], seed=0)
        counted = {t.name: t.params for t in towers(cfg, V)}
        assert counted == {"generator": sum(p.numel() for p in gen.parameters()),
                           "discriminator": sum(p.numel() for p in disc.parameters())}
        assert (disc.corrective is not None) == (corrective == "1")


def test_a_two_rank_zero3_run_exports_folders_transformers_and_finetune_use(tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from demo.corpora import news_articles
    from gpt_ds.data.tokenizer import train_tokenizer
    from gpt_ds.export import load_discriminator
    corpus = news_articles(tmp_path / "corpus", per_file=100, limit=200)
    tok_dir = train_tokenizer(corpus, 1000, tmp_path / "tok")
    run, out = tmp_path / "run", tmp_path / "export"
    text_run = [a for a in FAST if not a.startswith(("data.synthetic", "model.vocab_size", "model.embedding_size"))]
    gpt_ds("pretrain", "tiny-mpnet", *text_run, "model.generator_layers=1", f"run.dir={run}",
           f"data.sources=[{tmp_path / 'corpus'}]", f"data.tokenizer={tok_dir}", "train.max_steps=2",
           "checkpoint.every=100", "--nproc", "2")
    info = json.loads(gpt_ds("export", run, "--out", out, "--verify").stdout.strip().splitlines()[-1])
    assert info["verify_max_abs_diff"] <= 1e-5  # reloaded stock MPNet == gpt_ds's towers (GDES merged)
    assert json.loads((out / "discriminator" / "config.json").read_text())["architectures"] == ["MPNetModel"]
    assert "(MPNetModel)" in (out / "discriminator" / "README.md").read_text()
    assert "(MPNetForMaskedLM)" in (out / "generator" / "README.md").read_text()
    assert "also a model to fine-tune" in (out / "generator" / "README.md").read_text()  # results.md §8.14
    tok = AutoTokenizer.from_pretrained(out / "discriminator")
    batch = tok(["a good film", "the economy is growing fast"], return_tensors="pt", padding=True)
    assert AutoModel.from_pretrained(out / "discriminator")(**batch).last_hidden_state.shape[-1] == 64
    assert AutoModelForSequenceClassification.from_pretrained(out / "discriminator", num_labels=2)(
        **batch).logits.shape == (2, 2)
    assert load_discriminator(out / "discriminator")(batch["input_ids"], attention_mask=batch["attention_mask"]
                                                     ).logits.shape == batch["input_ids"].shape
    from safetensors.torch import load_file
    gen_sd = load_file(out / "generator" / "model.safetensors")  # untied: the head's two output biases agree
    assert torch.equal(gen_sd["lm_head.bias"], gen_sd["lm_head.decoder.bias"]) and gen_sd["lm_head.bias"].abs().sum() > 0
    fill = pipeline("fill-mask", model=str(out / "generator"))
    assert len(fill(f"The president said the {fill.tokenizer.mask_token} is growing.", top_k=3)) == 3
    # the generator folder is also an encoder to fine-tune (its card says so): a classifier gets all of its weights
    clf_enc = AutoModelForSequenceClassification.from_pretrained(out / "generator", num_labels=2).mpnet.state_dict()
    mlm_enc = fill.model.mpnet.state_dict()
    assert clf_enc.keys() == mlm_enc.keys() and all(torch.equal(v, mlm_enc[k]) for k, v in clf_enc.items())
    # the evaluation the demo prints, on a text longer than the positions (MPNet's table holds 2 more rows than it
    # may use: truncating at the table's size indexed past it)
    from gpt_ds.evaluate import order_sensitivity, rtd_report
    long_text = " ".join(["the economy is growing and the president said so"] * 40)
    assert order_sensitivity(out / "generator", [long_text], fit_texts=[long_text])["masked_tokens"] == 10
    assert 0 <= rtd_report(out, [long_text], [long_text], 1.0)["auc"] <= 1
    (out / "discriminator" / "rtd_head.safetensors").unlink()
    with pytest.raises(Exception, match="rtd_head.safetensors: missing"):
        load_discriminator(out / "discriminator")
    rows_ = [{"text": t, "label": i % 2} for i, t in enumerate(["good", "bad", "a fine film", "a poor film"] * 8)]
    data = tmp_path / "task.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows_))
    res = json.loads(gpt_ds("finetune", out / "discriminator", "--train", data, "--test", data, "--seeds", "1",
                            "--epochs", "1", "--no-save").stdout.strip().splitlines()[-1])
    assert 0 <= res["median"]["test"]["accuracy"] <= 1


def test_random_init_twin_of_a_gpt_ds_mpnet_starts_its_bias_local_too():
    """`gpt-ds finetune --random-init` on a gpt_ds MPNet export: the control starts as gpt_ds's pretraining did."""
    from gpt_ds.finetune.run import build_model, usable_positions
    from gpt_ds.model.hf_config import discriminator_config
    cfg = mpnet_cfg()
    expected = torch.nn.Embedding(32, 2)
    local_bias_(expected)
    for init, local in (("local", True), ("normal", False)):
        conf = discriminator_config(load_config("tiny-mpnet", [*SMALL, f"model.relative_bias_init={init}"]), V, 0)
        conf.num_labels = 3
        bias = build_model(None, conf, random_init=True).base_model.encoder.relative_attention_bias.weight
        assert torch.equal(bias, expected.weight) == local
    assert usable_positions(discriminator_config(cfg, V, 0)) == cfg.model.max_position_embeddings


def test_estimate_never_recommends_what_the_config_refuses_for_mpnet():
    """transformers' MPNet has no activation checkpointing: the estimator weighs only options without it, and its
    recommendation loads as a valid config."""
    from gpt_ds.zero.estimate import OPTIONS, estimate, parse_bytes
    cfg = load_config("tiny-mpnet", ["model.vocab_size=8000"])
    est = estimate(cfg, 1, 1, parse_bytes("80GB"))
    assert len(est["options"]) == len(OPTIONS) and not any(r["activation_checkpointing"] for r in est["options"])
    rec = est["recommended"]
    load_config("tiny-mpnet", ["model.vocab_size=8000", f"deepspeed.generator={rec['preset']}",
                               f"train.activation_checkpointing={str(rec['activation_checkpointing']).lower()}"])


def test_a_resume_into_another_backbone_is_refused_by_name():
    """model.arch is what the checkpoint holds; a checkpoint from before the key was ELECTRA. The bias's start is
    init only."""
    from gpt_ds.checkpoint.compat import model_differences
    electra = load_config("tiny", []).to_dict()
    assert "model.arch: 'electra' -> 'mpnet'" in model_differences(electra, load_config("tiny-mpnet", []))
    del electra["model"]["arch"]
    assert "model.arch: 'electra' -> 'mpnet'" in model_differences(electra, load_config("tiny-mpnet", []))
    assert model_differences(electra, load_config("tiny", [])) == []
    mp = load_config("tiny-mpnet", []).to_dict()
    assert model_differences(mp, load_config("tiny-mpnet", ["model.relative_bias_init=normal"])) == []
