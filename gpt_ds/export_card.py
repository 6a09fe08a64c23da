"""The model card (README.md) that goes into each exported folder: what the model is, how it was trained (data,
tokens, steps, FLOPs, the last logged metrics) and how to load and fine-tune it, for a team that gets only the folder.
"""
from __future__ import annotations

from pathlib import Path

from gpt_ds.config import Config
from gpt_ds.model.sizes import generator_sizes
from gpt_ds.flops import run_flops
from gpt_ds.train.metrics_file import read_rows

ROLE = {
    "discriminator": ("ElectraForPreTraining", "The ELECTRA discriminator: replaced-token detection on every token. "
                      "ELECTRA's downstream model: fine-tune it (and the generator folder beside it) against "
                      "`--random-init`."),
    "generator": ("ElectraForMaskedLM", "The masked-language-model generator that proposed replacements during "
                  "pretraining; usable with `pipeline(\"fill-mask\")`. Its encoder is also a model to fine-tune "
                  "(`AutoModelForSequenceClassification` drops the LM head): after small pretraining budgets it can be "
                  "the better of the two folders, so measure both against `--random-init`."),
    "mlm": ("ElectraForMaskedLM", "A BERT-style masked language model (`objective.kind=mlm`): the encoder to "
            "fine-tune."),
}


def last_metrics(run_dir: Path, step: int) -> dict:
    """The last logged training metrics at or before `step`, or {} when the run folder has none."""
    rows = [r for r in read_rows(run_dir, strict=False) if r.get("step", 0) <= step]
    return max(rows, key=lambda r: r.get("step", 0), default={})


def _fmt(x, digits=4) -> str:
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) else "n/a"


# model.arch=mpnet: the same roles as stock MPNet classes; the discriminator folder holds the encoder, its RTD head
# beside it in rtd_head.safetensors (transformers has no MPNet pretraining-head class)
MPNET_CLASS = {"discriminator": "MPNetModel", "generator": "MPNetForMaskedLM", "mlm": "MPNetForMaskedLM"}


def model_card(part: str, cfg: Config, state: dict, run_dir: Path) -> str:
    step, m = state["step"], cfg.model
    role = "mlm" if cfg.objective.kind == "mlm" else part
    cls, what = ROLE[role]
    arch = m.tower_arch(role, cfg.objective.kind)
    if arch == "mpnet":
        cls = MPNET_CLASS[role]
    tokens = step * cfg.train.global_batch * cfg.data.seq_len
    metrics = last_metrics(run_dir, step)
    size = (generator_sizes(m) if role == "generator" else
            dict(num_layers=m.num_layers, hidden_size=m.hidden_size, num_heads=m.num_heads,
                 intermediate_size=m.intermediate_size))
    sources = ", ".join(f"`{s.path}`" + (f" (weight {s.weight})" if s.weight != 1.0 else "") for s in cfg.data.sources) or ("synthetic ids" if cfg.data.synthetic else "n/a")
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {'fill-mask' if cls.endswith('ForMaskedLM') else 'feature-extraction'}",
        f"tags: [{'electra' if cfg.objective.kind == 'electra' else 'mlm'}, {arch}, gpt_ds]",
        "---",
        "",
        f"# {cfg.run.name} — {part} ({cls})",
        "",
        f"{what} Exported by gpt_ds {state.get('gpt_ds_version', '?')} from step {step} of run `{cfg.run.name}`.",
        "",
        "## How it was trained",
        "",
        f"- Objective: {cfg.objective.kind}" + (
            f" (generator + discriminator, embedding sharing {cfg.objective.embedding_sharing}, sampling "
            f"temperature {cfg.objective.temperature}, discriminator weight {cfg.objective.disc_weight}"
            + ("" if cfg.objective.rtd_on_specials else ", replaced-token detection on replaceable tokens only")
            + (f", corrective masked-LM loss on the discriminator with weight {cfg.objective.disc_mlm_weight} (its "
               f"head is not exported)" if cfg.objective.disc_mlm_weight > 0 else "")
            + (f", sequence contrastive loss on the discriminator's [CLS] with weight {cfg.objective.disc_scl_weight} "
               f"({cfg.objective.scl_rows:g} of the rows also seen uncorrupted)" if cfg.objective.disc_scl_weight > 0
               else "") + ")"
            if cfg.objective.kind == "electra" else "") + f"; mask probability {cfg.objective.mask_prob}.",
        f"- Encoder: {size['num_layers']} layers, hidden {size['hidden_size']}, {size['num_heads']} heads, "
        f"intermediate {size['intermediate_size']}, "
        + (f"embeddings {m.embedding_size}" if arch == "electra" else
           f"MPNet's learned relative-position bias (started {m.relative_bias_init})")
        + f", {m.max_position_embeddings} positions, vocabulary {state.get('vocab_size')}.",
        f"- Data: {sources}; sequences of {cfg.data.seq_len} tokens.",
        f"- Steps: {step} of {cfg.train.max_steps}, global batch {cfg.train.global_batch} -> {tokens:,} tokens seen; "
        f"{_fmt(run_flops(cfg, step, state.get('vocab_size')), 3)} training FLOPs (both towers, as gpt_ds counts "
        f"them).",
        f"- Optimizer: AdamW, lr {cfg.optim.lr}, warmup {cfg.optim.warmup_steps} steps, weight decay "
        f"{cfg.optim.weight_decay}"
        + (f"; the {'masked LM' if cfg.objective.kind == 'mlm' else 'discriminator'}'s encoder layer i (from 0) at "
           f"lr x {cfg.optim.encoder_layer_lr_decay:g}^(i+1)" if cfg.optim.encoder_layer_lr_decay != 1 else "")
        + (f"; the generator at lr {cfg.optim.generator_lr}" if cfg.optim.generator_lr > 0 else "")
        + f"; precision {cfg.train.precision}.",
    ]
    if metrics:
        lines.append(f"- Last logged metrics (step {metrics['step']}): generator loss {_fmt(metrics.get('gen_loss'))}, "
                     f"masked-token accuracy {_fmt(metrics.get('gen_acc'), 3)}"
                     + (f", discriminator loss {_fmt(metrics.get('disc_loss'))}, replaced-token AUC "
                        f"{_fmt(metrics.get('disc_auc'), 3)}" if "disc_loss" in metrics else "") + ".")
    lines += [
        "",
        "These are training-time figures, not a downstream evaluation: measure on your task against the same model "
        "from random init (`gpt-ds finetune ... --random-init`).",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(\"PATH\")",
        "model = AutoModelForSequenceClassification.from_pretrained(\"PATH\", num_labels=2)",
        "```",
        "",
        "Fine-tune with gpt_ds (accelerate; accuracy, macro-F1 and MCC, median over seeds):",
        "",
        "```",
        "gpt-ds finetune PATH --train train.jsonl --validation dev.jsonl --test test.jsonl --seeds 3",
        "```",
        "",
        f"The tokenizer in this folder stops at {m.max_position_embeddings} tokens (`model_max_length`); weights are "
        f"safetensors; no custom code (stock transformers {'MPNet' if arch == 'mpnet' else 'ELECTRA'} classes)."
        + (" MPNet counts positions past id 1, which is [UNK] in this tokenizer: a text's positions after an [UNK] "
           "are one lower than in pretraining." if arch == "mpnet" else ""),
        "",
    ]
    return "\n".join(lines)
