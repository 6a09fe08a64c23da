"""`gpt-ds estimate`: sizes from the real towers, activations vs saved tensors, model states vs DeepSpeed's estimator."""
from __future__ import annotations

import json

import pytest
import torch

from gpt_ds.cli import main as cli_main
from gpt_ds.config import DS_CONFIG_DIR, load_config
from gpt_ds.zero.estimate import estimate, parse_bytes
from gpt_ds.zero.memory import OPTIONS, Option, _touching_partition, auto_buckets, model_states
from gpt_ds.zero.sizes import encoder_activation_bytes, towers

TINY = ["model.vocab_size=1000"]


def test_tower_sizes_match_the_models_gpt_ds_builds():
    from gpt_ds.train.engines import build_models
    cfg = load_config("tiny", TINY)
    gen, disc = build_models(cfg, 1000, 0, seed=0)
    est = {t.name: t for t in towers(cfg)}
    for name, model in (("generator", gen), ("discriminator", disc)):
        assert est[name].params == sum(p.numel() for p in model.parameters()), name  # tied weights counted once
    # GDES: the discriminator's word table is the delta, shaped like the generator's (vocab x embedding)
    assert disc.pt.electra.embeddings.word_embeddings.weight.shape == gen.mlm.electra.embeddings.word_embeddings.weight.shape


@pytest.mark.parametrize("h, ffn, heads, seq", [(64, 256, 2, 32), (96, 192, 3, 16)])
def test_encoder_activations_match_saved_tensors(h, ffn, heads, seq):
    from transformers import ElectraConfig, ElectraModel
    cfg = load_config("tiny", TINY + [f"model.hidden_size={h}", f"model.intermediate_size={ffn}",
                                      f"model.num_heads={heads}", "model.num_layers=2", f"data.seq_len={seq}"])
    t = towers(cfg)[1]
    model = ElectraModel(ElectraConfig(vocab_size=1000, embedding_size=cfg.model.embedding_size, hidden_size=h,
                                       num_hidden_layers=2, num_attention_heads=heads, intermediate_size=ffn,
                                       max_position_embeddings=128)).train()
    seen = {}

    def pack(x):
        seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x
    ids = torch.randint(5, 1000, (3, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        model(ids, attention_mask=torch.ones_like(ids))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = sum(b for k, b in seen.items() if k not in params)
    est = encoder_activation_bytes(t, 3, seq, 4, checkpointing=False, flash=False)
    assert abs(est / measured - 1) < 0.05, (est, measured)
    assert encoder_activation_bytes(t, 3, seq, 4, checkpointing=True, flash=False) < est


def test_partition_touching_counts_straddling_params_whole():
    assert _touching_partition((10, 2, 2), 1) == 14
    assert _touching_partition((10, 2, 2), 2) == 14  # rank 1 owns [7,14): the 10 straddles, counted whole
    assert _touching_partition((4, 4, 4, 4), 2) == 8
    assert _touching_partition((4, 4, 4, 4), 4) == 4


def test_model_states_agree_with_deepspeed_estimator():
    """Mixed precision ZeRO-3, with and without offload: within 15% of DeepSpeed's own formula."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    cfg = load_config("electra-base")
    for t in towers(cfg):
        for nodes, gpn in ((1, 8), (4, 8)):
            world = nodes * gpn
            for opt, off, off_p in ((Option(3), False, False), (Option(3, "optimizer"), True, False),
                                    (Option(3, "param"), True, True)):
                st = model_states(t, opt, "bf16", world, **auto_buckets(t.hidden))
                cpu, gpu, largest = estimate_zero3_model_states_mem_needs(
                    t.params, t.largest_module, num_gpus_per_node=gpn, num_nodes=nodes, cpu_offload=off,
                    cpu_offload_params=off_p, zero_init=True, additional_buffer_factor=1.0)
                # per rank, the largest-layer working term aside (ours counts it as transient)
                ds_states = (gpu - largest) + (cpu / gpn if off else 0)
                ours = st.total + st.gpu_transient.get("fp32 grads at step", 0)
                assert abs(ours / ds_states - 1) < 0.15, (t.name, world, opt, ours, ds_states)


def test_zero3_states_shrink_with_ranks_and_stage_order():
    t = towers(load_config("electra-small"))[1]
    per = {n: model_states(t, Option(3), "bf16", n, **auto_buckets(t.hidden)).total for n in (1, 2, 8)}
    assert 0.45 < per[2] / per[1] < 0.55 and per[8] < per[2] / 3
    totals = [model_states(t, o, "bf16", 8, **auto_buckets(t.hidden)).gpu_steady for o in OPTIONS]
    assert totals[0] > totals[1] > totals[3] > totals[4] > totals[5]


def test_estimate_table_and_recommendation():
    cfg = load_config("electra-large")
    big = estimate(cfg, 2, 8, parse_bytes("80GB"))
    small = estimate(cfg, 2, 8, parse_bytes("16GB"))
    rows = big["options"]
    assert len(rows) == 2 * len(OPTIONS)
    fitting = [r for r in rows if r["fits"]]
    assert fitting == rows[:len(fitting)]
    assert [r["step_time_s"] for r in fitting] == sorted(r["step_time_s"] for r in fitting)
    rec = big["recommended"]
    assert (DS_CONFIG_DIR.parent / rec["preset"]).is_file()
    ck = {(r["option"], r["activation_checkpointing"]): r for r in rows}
    assert ck[("ZeRO-3", True)]["activation_bytes"] < ck[("ZeRO-3", False)]["activation_bytes"] / 3
    assert small["recommended"] is None or small["recommended"]["activation_checkpointing"]
    f = big["flops_per_step"]
    assert f["total"] == pytest.approx(f["generator"] + f["discriminator"] + f["sampling"])


def test_parse_bytes_and_cli(capsys):
    assert parse_bytes("80GB") == 80 << 30 and parse_bytes("512MiB") == 512 << 20
    with pytest.raises(Exception, match="--gpu-mem"):
        parse_bytes("lots")
    assert cli_main(["estimate", "tiny", *TINY, "--gpus-per-node", "2", "--gpu-mem", "8GB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["world_size"] == 2 and out["recommended"]["preset"].endswith("_fp32.json")
    assert cli_main(["estimate", "tiny", *TINY, "--gpus-per-node", "2", "--gpu-mem", "8GB"]) == 0
    assert "recommended:" in capsys.readouterr().out
