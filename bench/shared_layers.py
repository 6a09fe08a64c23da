"""Probe: ELECTRA with the generator running on the discriminator's lower layers (TEAMS-style sharing), before
building it into gpt_ds.

TEAMS (Shen et al., 2021) lets the generator be the discriminator's bottom layers plus an MLM head: the generator's
masked-LM gradient then trains the discriminator's own lower layers, where gpt_ds's two towers learn apart and only
share the word table (GDES). At CPU budgets the discriminator's downstream quality comes mostly from masked-LM signal
(docs/results.md §8.18), so sharing is the design change most likely to move `electra_minus_mlm`. This probe measures
it without changing the trainer: it runs `gpt-ds pretrain` in this process (one rank, ZeRO-0: the sharing crosses the
two engines' parameters, which only an unpartitioned layout allows) with the generator's encoder forward replaced by
the discriminator's first `model.generator_layers` layers and its relative-position bias. The generator's own layers
stay registered in its engine but get no gradient (AdamW skips them; the generator's zero_grad never sees the shared
ones), so the discriminator's optimizer steps the shared layers on the sum of both towers' gradients. The step's
FLOPs are the unshared run's, so the same `train.max_steps` is the same budget.

    DS_ACCELERATOR=cpu python bench/shared_layers.py tiny-mpnet run.dir=R 'data.sources=[S]' data.tokenizer=T \\
        train.max_steps=3720 deepspeed.generator=ds_configs/zero0_fp32.json \\
        deepspeed.discriminator=ds_configs/zero0_fp32.json

then `gpt-ds export R` and fine-tune `R/export/discriminator` (the generator folder holds its unused own layers).
Prints one JSON line last: the run's last logged record and how many parameters were shared.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers.modeling_outputs import BaseModelOutput


def share_lower_layers(engines) -> int:
    """Make the generator's encoder run on the discriminator's first k layers; return the shared parameter count."""
    gen, disc = engines.generator.module, engines.discriminator.module
    if not (gen.mpnet and disc.mpnet):
        raise SystemExit("shared_layers: MPNet towers only (model.arch=mpnet): ELECTRA towers differ in width")
    if engines.generator.zero_optimization_stage() != 0 or engines.discriminator.zero_optimization_stage() != 0:
        raise SystemExit("shared_layers: ZeRO-0 only (deepspeed.generator/discriminator=ds_configs/zero0_fp32.json)")
    if engines.generator.dp_world_size != 1:
        raise SystemExit("shared_layers: one rank only (leave out --nproc and run it outside a launcher)")
    g_enc, d_enc = gen.backbone.encoder, disc.backbone.encoder
    k = len(g_enc.layer)
    if k > len(d_enc.layer) or gen.mlm.config.hidden_size != disc.pt.config.hidden_size:
        raise SystemExit("shared_layers: the generator must be no deeper and as wide as the discriminator "
                         "(model.generator_layers <= model.num_layers, model.generator_hidden_ratio=1)")
    lower = list(d_enc.layer[:k])  # a plain list: not registered in the generator, so its engine never touches them

    def forward(hidden_states, attention_mask=None, output_attentions=False, output_hidden_states=False,
                return_dict=False, **kwargs):
        position_bias = d_enc.compute_position_bias(hidden_states)
        for layer in lower:
            hidden_states = layer(hidden_states, attention_mask, position_bias, **kwargs)[0]
        return BaseModelOutput(last_hidden_state=hidden_states) if return_dict else (hidden_states,)

    g_enc.forward = forward
    shared = [*d_enc.relative_attention_bias.parameters()] + [p for m in lower for p in m.parameters()]
    return sum(p.numel() for p in shared)


def main(argv: list[str]) -> int:
    import gpt_ds.train.trainer as trainer
    from gpt_ds.cli import main as cli

    built = trainer.build_engines
    counted = {}

    def build_shared(*args, **kwargs):
        engines = built(*args, **kwargs)
        counted["shared_params"] = share_lower_layers(engines)
        print(f"shared_layers: the generator runs on the discriminator's lower layers "
              f"({counted['shared_params']:,} parameters shared)", flush=True)
        return engines

    trainer.build_engines = build_shared
    code = cli(["pretrain", *argv])
    run_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("run.dir=")), None)
    last = {}
    metrics = Path(run_dir, "metrics.jsonl") if run_dir else None
    if code == 0 and metrics is not None and metrics.exists():
        lines = metrics.read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
    print(json.dumps({"exit_code": code, **counted, "last": last}))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
