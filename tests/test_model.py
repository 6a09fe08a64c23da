"""The towers and the masking against plain transformers computations on the same weights."""
import copy
import math

import torch
from transformers import ElectraForMaskedLM, ElectraForPreTraining

from gpt_ds.config import load_config
from gpt_ds.kernels.noise import gumbel_noise
from gpt_ds.model.discriminator import Discriminator
from gpt_ds.model.generator import Generator
from gpt_ds.model.hf_config import discriminator_config, generator_config
from gpt_ds.model.masking import mask_batch

SPECIALS = dict(pad=0, unk=1, cls=2, sep=3, mask=4)
V, L = 97, 24


def tiny_cfg(**over):
    ov = [f"{k}={v}" for k, v in over.items()]
    return load_config("tiny", ["model.hidden_size=32", "model.num_heads=2", "model.intermediate_size=64",
                                "model.embedding_size=16", "model.num_layers=2", "model.hidden_dropout=0",
                                "model.attention_dropout=0", "data.seq_len=24", *ov])


def rows(b, seed=0, pad_tail=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (b, L), generator=g)
    ids[:, 0], ids[:, -1 - pad_tail] = SPECIALS["cls"], SPECIALS["sep"]
    att = torch.ones_like(ids)
    if pad_tail:
        ids[:, L - pad_tail:] = SPECIALS["pad"]
        att[:, L - pad_tail:] = 0
    return ids, att


def do_mask(ids, att, numbers, **kw):
    args = dict(special_ids=[0, 1, 2, 3, 4], mask_id=4, vocab_size=V, mask_prob=0.15, mask_token_frac=0.85,
                keep_frac=0.15, random_frac=0.0, seed=7)
    args.update(kw)
    return mask_batch(ids, att, numbers, **args)


def test_masking_counts_specials_and_split():
    ids, att = rows(400, pad_tail=3)
    mk = do_mask(ids, att, torch.arange(400))
    n_maskable = L - 2 - 3
    per_row = torch.bincount(mk.positions // L, minlength=400)
    assert (per_row == int((0.15 + 0.005) * n_maskable)).all()
    flat = ids.flatten()
    assert not torch.isin(flat[mk.positions], torch.tensor([0, 1, 2, 3, 4])).any()
    assert (att.flatten()[mk.positions] == 1).all()
    became_mask = (mk.masked_ids.flatten()[mk.positions] == 4).float().mean().item()
    assert abs(became_mask - 0.85) < 0.04
    unchanged = mk.masked_ids.flatten() != 4
    assert (mk.masked_ids.flatten()[unchanged] == flat[unchanged]).all()  # no random replacement at 0%
    # positions spread evenly over the row
    pos_in_row = (mk.positions % L).float()
    assert abs(pos_in_row.mean().item() - (1 + 20) / 2) < 0.6


def test_masking_random_split_and_rank_independence():
    ids, att = rows(300, seed=1)
    mk = do_mask(ids, att, torch.arange(1000, 1300), mask_token_frac=0.8, keep_frac=0.1, random_frac=0.1)
    sel_new = mk.masked_ids.flatten()[mk.positions]
    sel_old = ids.flatten()[mk.positions]
    frac_mask = (sel_new == 4).float().mean().item()
    frac_changed = ((sel_new != 4) & (sel_new != sel_old)).float().mean().item()
    assert abs(frac_mask - 0.8) < 0.04 and abs(frac_changed - 0.1) < 0.04
    assert not torch.isin(sel_new[sel_new != 4], torch.tensor([0, 1, 2, 3])).any()
    # the same global sample gets the same mask whether it is batched alone or with others
    one = do_mask(ids[5:6], att[5:6], torch.tensor([1005]), mask_token_frac=0.8, keep_frac=0.1, random_frac=0.1)
    assert torch.equal(one.masked_ids[0], mk.masked_ids[5])
    assert torch.equal(one.row_ids, mk.row_ids[(mk.positions // L) == 5])


def _gen(cfg):
    torch.manual_seed(0)
    return Generator(generator_config(cfg, V, 0), kernels="reference", temperature=cfg.objective.temperature).eval()


def test_generator_loss_matches_transformers_and_samples_by_gumbel_max():
    cfg = tiny_cfg()
    gen = _gen(cfg)
    ids, att = rows(6, pad_tail=2)
    tt = torch.zeros_like(ids)
    mk = do_mask(ids, att, torch.arange(6))
    out = gen(mk.masked_ids, att, tt, mk.positions, mk.targets, mk.row_ids, ids, 99)
    hf = ElectraForMaskedLM(gen.mlm.config).eval()
    hf.load_state_dict(gen.mlm.state_dict())
    labels = torch.full_like(ids, -100).flatten()
    labels[mk.positions] = mk.targets
    ref = hf(mk.masked_ids, attention_mask=att, token_type_ids=tt, labels=labels.view_as(ids))
    assert torch.allclose(out.loss, ref.loss, atol=1e-6)
    logits = ref.logits.reshape(-1, V)[mk.positions]
    z = logits / cfg.objective.temperature + gumbel_noise(99, mk.row_ids, torch.arange(V))
    assert torch.equal(out.sampled, z.argmax(-1))
    assert torch.equal(out.correct, logits.argmax(-1) == mk.targets)
    expect = ids.clone().flatten()
    expect[mk.positions] = out.sampled
    assert torch.equal(out.corrupted_ids.flatten(), expect)


def test_gumbel_max_samples_follow_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    n = 40000
    g = gumbel_noise(5, torch.arange(n), torch.arange(5))
    for temp in (1.0, 2.0):
        freq = torch.bincount((logits / temp + g).argmax(-1), minlength=5).double() / n
        p = torch.softmax(logits.double() / temp, 0)
        assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / n) * 2


def test_discriminator_loss_matches_transformers():
    cfg = tiny_cfg(**{"objective.embedding_sharing": "none"})
    torch.manual_seed(1)
    disc = Discriminator(discriminator_config(cfg, V, 0), kernels="reference").eval()
    ids, att = rows(5, pad_tail=4)
    labels = (torch.rand(ids.shape) < 0.2).long()
    tt = torch.zeros_like(ids)
    out = disc(ids, att, tt, labels)
    hf = ElectraForPreTraining(disc.pt.config).eval()
    hf.load_state_dict(disc.pt.state_dict())
    ref = hf(ids, attention_mask=att, token_type_ids=tt, labels=labels)
    assert torch.allclose(out.loss, ref.loss, atol=1e-6)
    assert torch.allclose(out.logits, ref.logits[att.bool()], atol=1e-5)


def test_gdes_isolation_and_merged_export_equivalence():
    cfg = tiny_cfg()
    gen = _gen(cfg)
    torch.manual_seed(2)
    disc = Discriminator(discriminator_config(cfg, V, 0), kernels="reference", gdes=True).eval()
    emb = disc.pt.electra.embeddings
    assert emb.word_embeddings.weight.abs().sum() == 0 and emb.position_embeddings.weight.abs().sum() == 0
    ids, att = rows(4, pad_tail=1)
    tt = torch.zeros_like(ids)
    mk = do_mask(ids, att, torch.arange(4))
    gen.share_embeddings = True
    g = gen(mk.masked_ids, att, tt, mk.positions, mk.targets, mk.row_ids, ids, 3)
    labels = (g.corrupted_ids != ids).long()
    d = disc(g.corrupted_ids, att, tt, labels, g.base_embeds)
    gen.zero_grad()
    d.loss.backward()
    # the RTD loss reaches only the delta tables, never the generator
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in gen.parameters())
    assert emb.word_embeddings.weight.grad.abs().sum() > 0
    # a stock ElectraForPreTraining with E_G + delta merged gives the same logits
    with torch.no_grad():
        emb.word_embeddings.weight.add_(torch.randn_like(emb.word_embeddings.weight) * 0.01)
        emb.position_embeddings.weight.add_(torch.randn_like(emb.position_embeddings.weight) * 0.01)
        d2 = disc(g.corrupted_ids, att, tt, labels, g.base_embeds)
    hf = ElectraForPreTraining(disc.pt.config).eval()
    sd = disc.pt.state_dict()
    ge = gen.mlm.electra.embeddings
    sd["electra.embeddings.word_embeddings.weight"] = sd["electra.embeddings.word_embeddings.weight"] + ge.word_embeddings.weight
    sd["electra.embeddings.position_embeddings.weight"] = (sd["electra.embeddings.position_embeddings.weight"]
                                                           + ge.position_embeddings.weight)
    hf.load_state_dict(sd)
    with torch.no_grad():
        ref = hf(g.corrupted_ids, attention_mask=att, token_type_ids=tt)
    assert torch.allclose(d2.logits, ref.logits[att.bool()], atol=1e-5)


def test_activation_checkpointing_keeps_fewer_activations():
    from gpt_ds.train.engines import build_models

    def saved_bytes(cfg):
        gen, disc = build_models(cfg, V, 0, seed=0)
        disc.train()
        ids, att = rows(4)
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            disc(ids, att, torch.zeros_like(ids), torch.zeros_like(ids),
                 torch.zeros(4, L, cfg.model.embedding_size) if disc.gdes else None)
        return total[0]

    plain = saved_bytes(tiny_cfg(**{"model.num_layers": 4}))
    ckpt = saved_bytes(tiny_cfg(**{"model.num_layers": 4, "train.activation_checkpointing": "true"}))
    assert ckpt < 0.5 * plain, (ckpt, plain)


def test_step_flops_attention_and_encoder_terms_match_torchs_flop_counter():
    """gpt_ds.flops against torch's FlopCounterMode on a stock transformers encoder forward (eager attention):
    the attention products (QK^T, PV) are the counted bmm FLOPs, and the whole encoder the counted matmul FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import ElectraConfig, ElectraModel

    from gpt_ds.flops import attention_flops, encoder_forward_flops
    b, L, h, layers, ffn, e = 3, 24, 32, 2, 80, 16
    cfg = ElectraConfig(vocab_size=50, embedding_size=e, hidden_size=h, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=ffn, max_position_embeddings=L)
    cfg._attn_implementation = "eager"
    model = ElectraModel(cfg).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randint(0, 50, (b, L)))
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    assert counts["aten.bmm"] == attention_flops(b * L, L, h, layers)
    assert sum(counts.values()) == encoder_forward_flops(b * L, L, h, layers, ffn, e)


def test_output_priors_start_both_losses_at_the_data_prior():
    """model.init_output_priors: the generator's bias is the (centred) log unigram of the data, the RTD bias the
    log-odds of mask_prob, so the first MLM loss is about the unigram entropy instead of log V."""
    from gpt_ds.model.priors import replaced_log_odds, unigram_log_probs
    from gpt_ds.train.engines import build_models
    g = torch.Generator().manual_seed(0)
    zipf = 1.0 / torch.arange(1, V - 5 + 1, dtype=torch.float64)
    tokens = torch.multinomial(zipf / zipf.sum(), 256 * L, replacement=True, generator=g).view(256, L) + 5
    tokens[:, 0], tokens[:, -1] = SPECIALS["cls"], SPECIALS["sep"]

    class Rows:
        def __len__(self):
            return len(tokens)

        def batch(self, idx):
            return {"input_ids": tokens[torch.as_tensor(idx)]}

    logp = unigram_log_probs(Rows(), V, [0, 1, 2, 3, 4])
    counts = torch.bincount(tokens[:, 1:-1].reshape(-1), minlength=V).double()
    assert torch.allclose(logp[5:].double().exp(), (counts[5:] + 0.5) / (counts[5:].sum() + 0.5 * V), rtol=1e-5)
    cfg = tiny_cfg(**{"model.tie_output_embeddings": "false"})
    entropy = -(logp[5:].exp() * logp[5:]).sum().item() / logp[5:].exp().sum().item()
    losses = {}
    for with_priors in (True, False):
        gen, disc = build_models(cfg, V, SPECIALS["pad"], seed=0, unigram_logp=logp if with_priors else None)
        if with_priors:
            torch.testing.assert_close(gen.mlm.generator_lm_head.bias, logp - logp.mean())
            rtd_bias = disc.pt.discriminator_predictions.dense_prediction.bias
            assert torch.allclose(rtd_bias, torch.full_like(rtd_bias, replaced_log_odds(0.15)))
        ids = tokens[:64]
        masked = ids.clone()
        masked[:, 1:-1] = SPECIALS["mask"]
        labels = ids.clone()
        labels[:, [0, -1]] = -100
        with torch.no_grad():
            losses[with_priors] = gen.mlm.eval()(masked, labels=labels).loss.item()
    assert abs(losses[True] - entropy) < 0.1, (losses, entropy)
    assert losses[False] > math.log(V - 5) - 0.1 > entropy + 0.3


def test_head_and_encoder_kernel_settings_are_separate():
    from gpt_ds.kernels import encoder_fast_paths, head_impl
    from gpt_ds.kernels.encoder import ATTENTION_NAME
    from gpt_ds.train.engines import build_models
    cases = {("torch", "auto"): True, ("reference", "auto"): False, ("torch", "stock"): False,
             ("reference", "fast"): True}
    for (heads, encoder), fast in cases.items():
        assert encoder_fast_paths(heads, encoder) is fast
        cfg = load_config("tiny", [f"model.kernels={heads}", f"model.encoder_kernels={encoder}", "data.synthetic=true",
                                   "model.vocab_size=300", "model.num_layers=1"])
        gen, disc = build_models(cfg, 300, 0, seed=0)
        for tower in (gen.mlm, disc.pt):
            assert (tower.config._attn_implementation == ATTENTION_NAME) is fast, (heads, encoder)
        assert gen.kernels == disc.kernels == heads  # the heads keep their own setting
    assert head_impl("auto", on_gpu=False) == "torch" and head_impl("torch", on_gpu=True) == "torch"


def test_rtd_loss_mask_scores_only_the_tokens_it_names():
    """objective.rtd_on_specials=false: [CLS]/[SEP] (never replaced) leave the RTD loss; the mean is over the rest."""
    cfg = tiny_cfg(**{"objective.embedding_sharing": "none"})
    torch.manual_seed(1)
    disc = Discriminator(discriminator_config(cfg, V, 0), kernels="reference").eval()
    ids, att = rows(4, pad_tail=3)
    labels = ((torch.rand(ids.shape) < 0.2) & (ids > 4)).long()
    tt = torch.zeros_like(ids)
    keep = att.bool() & (ids > 4)
    out = disc(ids, att, tt, labels, loss_mask=keep)
    hf = ElectraForPreTraining(disc.pt.config).eval()
    hf.load_state_dict(disc.pt.state_dict())
    with torch.no_grad():
        logits = hf(ids, attention_mask=att, token_type_ids=tt).logits.double()[keep]
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[keep].double())
    assert out.logits.numel() == int(keep.sum()) < int(att.sum())
    assert abs(out.loss.item() - ref.item()) < 1e-6


def test_corrective_lm_is_a_plain_cross_entropy_at_the_masked_positions():
    """objective.disc_mlm_weight > 0: the discriminator also predicts the original token where the generator wrote;
    its loss is the float64 cross-entropy of the same head on transformers' hidden states, and it trains the encoder."""
    cfg = tiny_cfg(**{"objective.embedding_sharing": "none"})
    torch.manual_seed(3)
    disc = Discriminator(discriminator_config(cfg, V, 0), kernels="reference", corrective_lm=True).eval()
    ids, att = rows(3, pad_tail=2)
    tt = torch.zeros_like(ids)
    mk = do_mask(ids, att, torch.arange(3))
    corrupted = ids.clone()
    corrupted.view(-1)[mk.positions] = (mk.targets + 7) % (V - 5) + 5  # any replacement
    labels = (corrupted != ids).long()
    out = disc(corrupted, att, tt, labels, positions=mk.positions, targets=mk.targets)
    hf = ElectraForPreTraining(disc.pt.config).eval()
    hf.load_state_dict(disc.pt.state_dict())
    with torch.no_grad():
        h = hf.electra(corrupted, attention_mask=att, token_type_ids=tt).last_hidden_state.double()
        head = copy.deepcopy(disc.corrective).double()
        logits = head["out"](head["predictions"](h.reshape(-1, h.shape[-1])[mk.positions]))
        ref = torch.nn.functional.cross_entropy(logits, mk.targets)
    assert abs(out.mlm_loss.item() - ref.item()) < 1e-5
    out.mlm_loss.backward()
    assert disc.pt.electra.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    # the head is no part of what a downstream team gets: the exported tower is disc.pt
    assert not any(k.startswith("corrective") for k in disc.pt.state_dict())
    from gpt_ds.model.weight_decay import decays  # LayerNorm and biases undecayed, as everywhere
    assert sorted(n for n, _ in disc.corrective.named_parameters() if decays(n)) == \
        ["out.weight", "predictions.dense.weight"]
    plain = Discriminator(discriminator_config(cfg, V, 0), kernels="reference").eval()
    assert plain.corrective is None and plain(corrupted, att, tt, labels, positions=mk.positions,
                                              targets=mk.targets).mlm_loss is None


def test_sequence_contrastive_loss_matches_a_float64_reference_and_leaves_the_token_losses_alone():
    """objective.disc_scl_weight > 0: rows 0..k-1 also pass the encoder uncorrupted, in the same call. The token
    losses read the corrupted rows only (as without the views), the SCL loss is the float64 InfoNCE of transformers'
    [CLS] vectors, and under GDES the generator hands over the base embeddings of the views too."""
    cfg = tiny_cfg(**{"objective.embedding_sharing": "none"})
    torch.manual_seed(5)
    disc = Discriminator(discriminator_config(cfg, V, 0), kernels="reference", corrective_lm=True).eval()
    b, k, tau = 4, 2, 0.3
    ids, att = rows(b, seed=1, pad_tail=2)
    tt = torch.zeros_like(ids)
    mk = do_mask(ids, att, torch.arange(b))
    corrupted = ids.clone()
    corrupted.view(-1)[mk.positions] = (mk.targets + 11) % (V - 5) + 5
    labels = (corrupted != ids).long()
    alone = disc(corrupted, att, tt, labels, positions=mk.positions, targets=mk.targets)
    out = disc(corrupted, att, tt, labels, positions=mk.positions, targets=mk.targets, view_ids=ids[:k],
               scl_temperature=tau)
    assert alone.scl_loss is None
    assert abs(out.loss.item() - alone.loss.item()) < 1e-6 and abs(out.mlm_loss.item() - alone.mlm_loss.item()) < 1e-5
    hf = ElectraForPreTraining(disc.pt.config).eval()
    hf.load_state_dict(disc.pt.state_dict())
    with torch.no_grad():
        cls = [hf.electra(x, attention_mask=a, token_type_ids=t).last_hidden_state[:, 0].double()
               for x, a, t in ((corrupted, att, tt), (ids[:k], att[:k], tt[:k]))]
    c, v = (x / x.norm(dim=-1, keepdim=True) for x in cls)
    sim = v @ c.T / tau  # (k, b): view i against every corrupted row
    forward = -(sim.diagonal() - sim.logsumexp(-1)).mean()  # each view picks its twin among b rows
    back = -(sim[:, :k].diagonal() - sim[:, :k].logsumexp(0)).mean()  # each twin picks its view among k
    assert abs(out.scl_loss.item() - 0.5 * (forward + back).item()) < 1e-5
    right = (sim.argmax(-1) == torch.arange(k)).sum() + (sim[:, :k].argmax(0) == torch.arange(k)).sum()
    assert out.scl_correct.item() == right.item()
    out.scl_loss.backward()
    assert disc.pt.electra.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    # GDES: the generator's detached base embeddings cover the corrupted rows, then the views
    gcfg = tiny_cfg()
    gen = Generator(generator_config(gcfg, V, 0), kernels="reference", share_embeddings=True).eval()
    g = gen(mk.masked_ids, att, tt, mk.positions, mk.targets, mk.row_ids, ids, 3, view_ids=ids[:k])
    emb = gen.mlm.electra.embeddings
    pos = emb.position_embeddings(torch.arange(L))[None]
    assert g.base_embeds.shape[0] == b + k
    assert torch.allclose(g.base_embeds[b:], emb.word_embeddings(ids[:k]) + pos)
    assert torch.allclose(g.base_embeds[:b], emb.word_embeddings(g.corrupted_ids) + pos)


def test_step_flops_count_a_narrow_mpnet_generator_as_torchs_flop_counter_does():
    """An MPNet generator narrower than the discriminator (objective.embedding_sharing=none) has no embedding
    projection and a head of its own width: gpt_ds.flops' generator term is what FlopCounterMode counts in its
    forward (encoder over every token, head at the masked positions)."""
    from torch.utils.flop_counter import FlopCounterMode

    from gpt_ds.flops import step_flops
    b = 4
    cfg = tiny_cfg(**{"model.arch": "mpnet", "objective.embedding_sharing": "none",
                      "model.generator_hidden_ratio": 0.5, "train.global_batch": b})
    conf = generator_config(cfg, V, SPECIALS["pad"])
    conf._attn_implementation = "eager"
    gen = Generator(conf, kernels="reference").eval()
    assert gen.mlm.config.hidden_size == 16 and gen.mpnet
    ids, att = rows(b)
    per_row = int((cfg.objective.mask_prob + 0.005) * L)
    positions = (torch.arange(b)[:, None] * L + torch.arange(1, 1 + per_row)[None, :]).reshape(-1)
    targets = ids.reshape(-1)[positions]
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        gen(ids, att, torch.zeros_like(ids), positions, targets, positions // L, ids, seed=1)
    assert fc.get_total_flops() == step_flops(cfg, V)["generator"] / 3
