"""model.generator_arch: an ELECTRA discriminator with an MPNet generator. Held to plain transformers on the same
weights (GDES across two position numberings), sized alike by the engines, the estimator and the FLOP counter, and a
2-rank ZeRO-3 run whose export reloads as stock classes."""
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import ElectraForPreTraining, MPNetForMaskedLM

from gpt_ds.config import ConfigError, load_config
from gpt_ds.model.relative_bias import local_bias_
from test_model import SPECIALS, V, do_mask, rows
from test_mpnet import stock_mpnet_logits
from test_train import FAST, gpt_ds

HYBRID = ["model.generator_arch=mpnet", "model.generator_hidden_ratio=1", "model.generator_layers=1",
          "model.hidden_size=32", "model.embedding_size=32", "model.num_heads=2", "model.intermediate_size=64",
          "model.num_layers=2", "model.hidden_dropout=0", "model.attention_dropout=0", "data.seq_len=24",
          "model.kernels=reference"]


def hybrid_cfg(*over):
    return load_config("tiny", [*HYBRID, *over])


def test_config_refuses_what_the_towers_cannot_share_or_do():
    cfg = hybrid_cfg()
    assert cfg.model.arch == "electra" and cfg.model.generator_arch == "mpnet"
    for override, named in (("model.embedding_size=16", r"model.generator_hidden_ratio=0.5 \(a generator 16 wide"),
                            ("objective.kind=mlm", "model.generator_arch = mpnet: an MLM run has one tower"),
                            ("data.two_segments=true", "data.two_segments"),
                            ("train.activation_checkpointing=true", "train.activation_checkpointing")):
        with pytest.raises(ConfigError, match=named):
            hybrid_cfg(override)
    hybrid_cfg("model.embedding_size=16", "objective.embedding_sharing=none")  # nothing shared: any widths
    # the other way round (an ELECTRA generator, MPNet discriminator): its table is model.embedding_size wide
    with pytest.raises(ConfigError, match="Set model.embedding_size=32,"):
        load_config("tiny", [*HYBRID, "model.arch=mpnet", "model.generator_arch=electra", "model.embedding_size=16"])


def test_towers_match_stock_models_and_gdes_merges_across_position_numberings():
    from gpt_ds.export import _merge_gdes
    from gpt_ds.train.engines import build_models
    cfg = hybrid_cfg()
    gen, disc = build_models(cfg, V, SPECIALS["pad"], seed=0)
    gen.eval(), disc.eval()
    assert gen.mpnet and not disc.mpnet
    expected = torch.nn.Embedding(32, 2)
    local_bias_(expected)  # the MPNet generator's bias starts local (model.relative_bias_init)
    assert torch.equal(gen.backbone.encoder.relative_attention_bias.weight, expected.weight)

    ids, att = rows(5, pad_tail=3)
    tt = torch.zeros_like(ids)
    mk = do_mask(ids, att, torch.arange(5))
    out = gen(mk.masked_ids, att, tt, mk.positions, mk.targets, mk.row_ids, ids, 5)
    logits, _ = stock_mpnet_logits(gen, mk.masked_ids, att)
    logits = logits[mk.positions]
    assert torch.allclose(out.loss, F.cross_entropy(logits, mk.targets), atol=1e-6)

    labels = (out.corrupted_ids != ids).long()
    emb = disc.backbone.embeddings
    with torch.no_grad():  # non-zero deltas, so the merge is tested; the generator's rows 0-1 must not be used
        emb.word_embeddings.weight.normal_(0, 0.02)
        emb.position_embeddings.weight.normal_(0, 0.02)
        gen.backbone.embeddings.position_embeddings.weight[:2] = 100.0
        out = gen(mk.masked_ids, att, tt, mk.positions, mk.targets, mk.row_ids, ids, 5)
        d = disc(out.corrupted_ids, att, tt, labels, out.base_embeds)
    sd = {k: v.clone() for k, v in disc.pt.state_dict().items()}
    _merge_gdes(sd, gen.mlm.state_dict(), "electra", "mpnet")  # as the export merges them
    merged = ElectraForPreTraining(disc.pt.config).eval()
    merged.load_state_dict(sd)
    with torch.no_grad():
        ref = merged(out.corrupted_ids, attention_mask=att, token_type_ids=tt).logits
    assert torch.allclose(d.logits, ref[att.bool()], atol=1e-5)
    assert torch.allclose(d.loss, F.binary_cross_entropy_with_logits(ref[att.bool()], labels[att.bool()].float()),
                          atol=1e-6)


def test_estimator_and_flop_counter_size_the_towers_the_engines_build():
    from gpt_ds.flops import step_flops
    from gpt_ds.train.engines import build_models
    from gpt_ds.zero.sizes import towers
    cfg = hybrid_cfg()
    gen, disc = build_models(cfg, V, SPECIALS["pad"], seed=0)
    counted = {t.name: t.params for t in towers(cfg, V)}
    assert counted == {"generator": sum(p.numel() for p in gen.parameters()),
                       "discriminator": sum(p.numel() for p in disc.parameters())}
    # an MPNet generator reads a table as wide as itself, not model.embedding_size, and projects nothing
    from gpt_ds.flops import encoder_forward_flops, lm_head_flops
    narrow = hybrid_cfg("model.embedding_size=16", "objective.embedding_sharing=none")
    tokens, L = narrow.train.global_batch * 24, 24
    masked = int((narrow.objective.mask_prob + 0.005) * L) * narrow.train.global_batch
    expected = 3 * (encoder_forward_flops(tokens, L, 32, 1, 64, 32) + lm_head_flops(masked, 32, 32, V))
    assert step_flops(narrow, V)["generator"] == expected
    assert step_flops(load_config("tiny", [*HYBRID, "model.embedding_size=16", "objective.embedding_sharing=none",
                                           "model.generator_arch=electra"]), V)["generator"] != expected
    from gpt_ds.zero.estimate import estimate, parse_bytes
    est = estimate(hybrid_cfg("model.vocab_size=8000"), 1, 1, parse_bytes("80GB"))
    assert not any(r["activation_checkpointing"] for r in est["options"])  # refused for an MPNet tower


def test_a_resume_into_another_generator_backbone_is_refused_by_name():
    from gpt_ds.checkpoint.compat import model_differences
    saved = load_config("tiny", []).to_dict()
    del saved["model"]["generator_arch"]  # a checkpoint from before the key: its generator was model.arch's
    assert "model.generator_arch: '' -> 'mpnet'" in model_differences(saved, hybrid_cfg())
    assert model_differences(saved, load_config("tiny", [])) == []


def test_a_two_rank_zero3_run_exports_stock_folders(tmp_path):
    from transformers import AutoModelForMaskedLM, pipeline

    from demo.corpora import news_articles
    from gpt_ds.data.tokenizer import train_tokenizer
    from gpt_ds.export import load_discriminator
    corpus = news_articles(tmp_path / "corpus", per_file=100, limit=200)
    tok_dir = train_tokenizer(corpus, 1000, tmp_path / "tok")
    run, out = tmp_path / "run", tmp_path / "export"
    text_run = [a for a in FAST if not a.startswith(("data.synthetic", "model.vocab_size"))]
    gpt_ds("pretrain", "tiny", *text_run, "model.generator_arch=mpnet", "model.generator_hidden_ratio=0.5",
           "model.generator_layers=1", f"run.dir={run}", f"data.sources=[{tmp_path / 'corpus'}]",
           f"data.tokenizer={tok_dir}", "train.max_steps=2", "checkpoint.every=100", "--nproc", "2")
    info = json.loads(gpt_ds("export", run, "--out", out, "--verify").stdout.strip().splitlines()[-1])
    assert info["verify_max_abs_diff"] <= 1e-5  # reloaded stock models == gpt_ds's towers (GDES merged)
    arch = {p: json.loads((out / p / "config.json").read_text())["architectures"] for p in ("generator",
                                                                                          "discriminator")}
    assert arch == {"generator": ["MPNetForMaskedLM"], "discriminator": ["ElectraForPreTraining"]}
    assert "(MPNetForMaskedLM)" in (out / "generator" / "README.md").read_text()
    assert "(ElectraForPreTraining)" in (out / "discriminator" / "README.md").read_text()
    assert isinstance(AutoModelForMaskedLM.from_pretrained(out / "generator"), MPNetForMaskedLM)
    fill = pipeline("fill-mask", model=str(out / "generator"))
    assert len(fill(f"The president said the {fill.tokenizer.mask_token} is growing.", top_k=3)) == 3
    disc = load_discriminator(out / "discriminator")
    batch = fill.tokenizer(["the economy is growing fast"], return_tensors="pt")
    assert disc(batch["input_ids"], attention_mask=batch["attention_mask"]).logits.shape == batch["input_ids"].shape
