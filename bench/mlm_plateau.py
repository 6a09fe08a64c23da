"""Is "no masked LM trained here beats word frequencies at [MASK]" (docs/results.md §8.7) a property of the budget,
or of gpt_ds? An independent control and a reproducible copy-task measurement, in plain transformers + PyTorch.

- Train mode (default): a plain `transformers` ElectraForMaskedLM of the preset's size (learned positions, HF's own
  init) trained by a plain PyTorch loop (AdamW, warmup then linear decay, clipping 1) on a token store's stream,
  every selected position shown as [MASK] (no copy task to learn first). Every --every steps: the held-out
  masked-token cross-entropy beside that of the training stream's word frequencies (add-1/2, the helper the generator's
priors and `gpt_ds.evaluate` use). Nothing of gpt_ds's
  trainer, masking, kernels or data loader is used: only the store's token files are read.
- `--model DIR` (an exported masked LM: EXPORT/generator, or an MLM export's): no training; the same held-out
  windows with one in seven of the selected positions left visible (as BERT/ELECTRA masking does), and the
  cross-entropy at each group. A masked LM whose training loss falls by copying the visible ones scores low there and
  stays at word frequencies at [MASK].

- `--arch mpnet [--local-bias]` (train mode): the same loop with a stock `transformers` MPNetForMaskedLM of the same
  size, the one stock encoder with a learned scalar attention bias per relative distance (T5-style buckets).
  `--local-bias` starts that bias at -slope * distance (slopes 1 and 1/4 by head, ALiBi's shape), so attention
  favours near positions from step 0; the bias is still learned. Position ids are passed explicitly (MPNet derives
  them from pad id 1, which is [UNK] in gpt_ds's tokenizers). `--layer-decay D` trains encoder layer i at
  lr * D ** (i + 1) (`tiny`'s optim.encoder_layer_lr_decay); `--save DIR` writes the trained model and tokenizer as
  an HF folder for `gpt-ds finetune` (`--steps 0 --save DIR`: the untrained model, a random-init twin that keeps
  `--local-bias`). Results §8.12.

The held-out text is the last --held-frac of the stream (windows drawn with a fixed seed), the word frequencies are
counted on the rest; `--held-out STORE2` takes the windows from another store instead (text a pretrained --model never
saw: `gpt-ds prepare` of the demo's held-out news file) and counts the frequencies on all of --store. One JSON line
last.

    .venv/bin/python bench/mlm_plateau.py --store runs/demo/store --steps 1000          # plain loop, ~10 min here
    .venv/bin/python bench/mlm_plateau.py --steps 400 --arch mpnet --local-bias   # ~6 min here
    .venv/bin/python bench/mlm_plateau.py --store runs/demo/store --model runs/demo/export/generator \
        --held-out runs/demo/held_store      # gpt-ds prepare --input runs/demo/corpus/news-006.txt ... --out it
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def token_stream(store: Path) -> np.ndarray:
    m = json.loads((store / "manifest.json").read_text())
    parts = [np.memmap(store / "shards" / s["name"], dtype=np.dtype(m["dtype"]), mode="r") for s in m["shards"]]
    return np.concatenate([np.asarray(p) for p in parts]).astype(np.int64)


def windows(src: np.ndarray, rng: np.random.Generator, batch: int, seq_len: int, cls: int, sep: int,
            mask_prob: float = 0.15):
    """`batch` random windows of the stream as [CLS] ... [SEP], and `mask_prob` of the inner positions selected."""
    starts = rng.integers(0, len(src) - seq_len, batch)
    x = torch.from_numpy(np.stack([np.concatenate([[cls], src[s:s + seq_len - 2], [sep]]) for s in starts]))
    sel = torch.from_numpy(rng.random(x.shape) < mask_prob)
    sel[:, 0] = sel[:, -1] = False
    return x, sel


class WithPositions(torch.nn.Module):
    """MPNet with position ids given: its own rule counts positions past pad id 1, which is [UNK] here."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.first = model.config.pad_token_id + 1

    def forward(self, input_ids, labels=None):
        pos = torch.arange(self.first, self.first + input_ids.shape[1])[None].expand_as(input_ids)
        return self.model(input_ids=input_ids, position_ids=pos, labels=labels)


def build_mlm(arch: str, m, vocab: int, pad_id: int, local_bias: bool) -> torch.nn.Module:
    """A stock transformers masked LM of the preset's size, initialised by transformers itself."""
    from transformers import ElectraConfig, ElectraForMaskedLM, MPNetConfig, MPNetForMaskedLM
    if arch == "electra":
        return ElectraForMaskedLM(ElectraConfig(
            vocab_size=vocab, embedding_size=m.embedding_size, hidden_size=m.hidden_size,
            num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size,
            max_position_embeddings=m.max_position_embeddings, pad_token_id=pad_id))
    from gpt_ds.model.relative_bias import local_bias_
    model = MPNetForMaskedLM(MPNetConfig(
        vocab_size=vocab, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
        intermediate_size=m.intermediate_size, max_position_embeddings=m.max_position_embeddings + 2, pad_token_id=1))
    if local_bias:
        local_bias_(model.mpnet.encoder.relative_attention_bias)
    return WithPositions(model)


def cross_entropies(model, evals, mask_id: int, log_q: np.ndarray, visible_frac: float) -> dict:
    """Held-out CE (nats per piece) at [MASK] and, when visible_frac > 0, at selected positions left as they are."""
    vis_rng = np.random.default_rng(7)
    sums = {"mask": [0.0, 0], "visible": [0.0, 0], "unigram": [0.0, 0]}
    model.eval()
    with torch.no_grad():
        for x, sel in evals:
            visible = sel & torch.from_numpy(vis_rng.random(x.shape) < visible_frac)
            shown_mask = sel & ~visible
            log_p = model(input_ids=x.masked_fill(shown_mask, mask_id)).logits.log_softmax(-1)
            nll = -log_p.gather(-1, x[..., None])[..., 0]
            for key, where in (("mask", shown_mask), ("visible", visible)):
                sums[key][0] += nll[where].sum().item()
                sums[key][1] += int(where.sum())
            sums["unigram"][0] += float(-log_q[x[shown_mask].numpy()].sum())
            sums["unigram"][1] += int(shown_mask.sum())
    model.train()
    return {k: s / n for k, (s, n) in sums.items() if n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="runs/demo/store")
    ap.add_argument("--preset", default="tiny", help="sizes, batch and sequence length from this preset")
    ap.add_argument("--model", default=None, help="evaluate this exported masked LM instead of training one")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--batch", type=int, default=0, help="sequences per step (default: the preset's global batch)")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--held-frac", type=float, default=0.05)
    ap.add_argument("--held-out", default=None, help="a store to draw the held-out windows from (default: the tail "
                                                       "of --store)")
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--arch", choices=("electra", "mpnet"), default="electra",
                    help="the stock transformers masked LM to train (mpnet: learned relative-position bias)")
    ap.add_argument("--save", default=None, help="train mode: write the trained masked LM and the tokenizer here (an "
                                                 "HF folder `gpt-ds finetune` takes)")
    ap.add_argument("--layer-decay", type=float, default=1.0,
                    help="encoder layer i learns at lr * decay ** (i + 1), as `tiny`'s optim.encoder_layer_lr_decay "
                         "(default 1: every weight at --lr)")
    ap.add_argument("--mask-prob", type=float, default=0.15, help="share of positions masked in training "
                    "(held-out figures always mask 15%%)")
    ap.add_argument("--local-bias", action="store_true",
                    help="with --arch mpnet: start the relative-position bias at -slope * distance")
    a = ap.parse_args()
    if a.save and a.model:
        ap.error("--save writes a model this bench trains; with --model nothing is trained")
    if a.local_bias and a.arch != "mpnet":
        ap.error("--local-bias needs --arch mpnet (ELECTRA has no relative-position bias to start)")
    if not a.model and a.steps == 0 and not a.save:
        ap.error("--steps 0 trains nothing: give --save DIR to write the untrained model (a random-init twin)")
    if not a.model and 0 < a.steps <= a.warmup:
        ap.error(f"--steps {a.steps} must exceed --warmup {a.warmup}")
    if not 0 < a.mask_prob < 1:
        ap.error(f"--mask-prob {a.mask_prob} must be in (0, 1)")
    for flag, path in (("--store", a.store), ("--held-out", a.held_out)):
        if path and not (Path(path) / "manifest.json").is_file():
            ap.error(f"{flag} {path}: not a store written by `gpt-ds prepare` (make demo writes runs/demo/store)")
    if a.model and not (Path(a.model) / "config.json").is_file():
        ap.error(f"--model {a.model}: no config.json; give an exported masked LM (EXPORT/generator)")
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from gpt_ds.config import load_config
    from gpt_ds.model.priors import smoothed_log_frequencies  # the baseline every word-frequency figure here uses
    store = Path(a.store)
    tok = AutoTokenizer.from_pretrained(store / "tokenizer")
    cfg = load_config(a.preset, [])
    batch, seq_len = a.batch or cfg.train.global_batch, cfg.data.seq_len
    stream = token_stream(store)
    if a.held_out:
        train, held = stream, token_stream(Path(a.held_out))
    else:
        cut = int(len(stream) * (1 - a.held_frac))
        train, held = stream[:cut], stream[cut:]
    log_q = smoothed_log_frequencies(torch.from_numpy(train), len(tok), tok.all_special_ids).numpy()
    torch.manual_seed(0)
    ids = dict(cls=tok.cls_token_id, sep=tok.sep_token_id)
    eval_rng = np.random.default_rng(123)
    out = {"store": str(store), "held_out": a.held_out or f"the last {a.held_frac} of --store", "held_out_tokens": len(held), "train_tokens": len(train)}
    if a.model:
        model = AutoModelForMaskedLM.from_pretrained(a.model)
        evals = [windows(held, eval_rng, cfg.train.global_batch, seq_len, **ids) for _ in range(a.eval_batches)]
        ce = cross_entropies(model, evals, tok.mask_token_id, log_q, visible_frac=1 / 7)
        print(f"{a.model}: held-out CE at [MASK] {ce['mask']:.3f} nats, at selected positions left visible "
              f"{ce['visible']:.3f}; word frequencies at [MASK] {ce['unigram']:.3f}", flush=True)
        print(json.dumps({**out, "model": a.model, "ce_at_mask": ce["mask"], "ce_at_visible": ce["visible"],
                          "unigram_ce": ce["unigram"]}))
        return 0
    model = build_mlm(a.arch, cfg.model, len(tok), tok.pad_token_id, a.local_bias)
    params = model.parameters()
    if a.layer_decay != 1.0:  # tiny's optim.encoder_layer_lr_decay: layer i at lr * decay ** (i + 1)
        from gpt_ds.model.weight_decay import param_groups
        params = param_groups(model, 0.01, a.lr, a.layer_decay, cfg.model.num_layers)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / a.warmup, max(0.0, (a.steps - s) / (a.steps - a.warmup))))
    rng = np.random.default_rng(0)
    evals = [windows(held, eval_rng, cfg.train.global_batch, seq_len, **ids) for _ in range(a.eval_batches)]
    curve, t0 = [], time.time()
    for step in range(1, a.steps + 1):
        x, sel = windows(train, rng, batch, seq_len, **ids, mask_prob=a.mask_prob)
        loss = model(input_ids=x.masked_fill(sel, tok.mask_token_id), labels=x.masked_fill(~sel, -100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % a.every == 0 or step == 1:
            ce = cross_entropies(model, evals, tok.mask_token_id, log_q, visible_frac=0.0)
            curve.append({"step": step, "train_loss": loss.item(), "ce_at_mask": ce["mask"]})
            print(f"step {step}: train loss {loss.item():.3f}, held-out CE at [MASK] {ce['mask']:.3f} nats, word "
                  f"frequencies {ce['unigram']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    if not curve:  # --steps 0: the untrained model, as transformers (and --local-bias) initialise it
        ce = cross_entropies(model, evals, tok.mask_token_id, log_q, visible_frac=0.0)
        curve.append({"step": 0, "train_loss": None, "ce_at_mask": ce["mask"]})
    if a.save:
        hf = model.model if isinstance(model, WithPositions) else model
        hf.save_pretrained(a.save)
        tok.save_pretrained(a.save)
        out["saved"] = a.save
    print(json.dumps({**out, "arch": a.arch, "local_bias": a.local_bias, "layer_decay": a.layer_decay,
                      "steps": a.steps, "lr": a.lr, "mask_prob": a.mask_prob, "tokens_seen": a.steps * batch * seq_len,
                      "ce_at_mask": curve[-1]["ce_at_mask"], "unigram_ce": ce["unigram"], "curve": curve}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
