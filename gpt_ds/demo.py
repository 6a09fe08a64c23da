"""`make demo`: real text -> tokenizer -> token store -> `tiny` on 2 ranks with ZeRO-3 -> export -> what it learned.

Everything it shows comes from the exported Hugging Face folders loaded with plain transformers, on articles the
run never trained on.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

RUN = Path(os.environ.get("GPT_DS_DEMO_DIR", "runs/demo"))
HELD_OUT = 40  # articles kept out of training for the evaluation
STEPS = int(os.environ.get("GPT_DS_DEMO_STEPS", "400"))


def gpt_ds(*args: str) -> None:
    cmd = [sys.executable, "-m", "gpt_ds.cli", *args]
    print("$ gpt-ds " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def corpus() -> tuple[list[Path], list[str]]:
    """The news articles (DATA.md); the last file's articles are held out of training."""
    from gpt_ds.data.corpora import news_articles
    files = news_articles(RUN / "corpus")
    held = [d for d in files[-1].read_text().split("\n\n") if d.strip()][:HELD_OUT]
    return files[:-1], held


def curve(run_dir: Path) -> None:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = {r["step"]: r for r in rows}  # a resumed run may repeat lines; the latest wins
    steps = sorted(last)
    pick = [steps[int(i * (len(steps) - 1) / 7)] for i in range(8)] if len(steps) >= 8 else steps
    print("\nloss curve (training batches; RTD prior = the loss of always guessing the replaced share)")
    print(f"{'step':>6} {'loss':>8} {'MLM':>7} {'MLM acc':>8} {'RTD':>7} {'prior':>7} {'AUC':>6} {'tok/s':>8}")
    for s in pick:
        r = last[s]
        print(f"{s:>6} {r['loss']:8.3f} {r['gen_loss']:7.3f} {r['gen_acc']:8.3f} {r['disc_loss']:7.4f} "
              f"{r['disc_loss_prior']:7.4f} {r['disc_auc']:6.3f} {r['tokens_per_s']:8.0f}")


def evaluate(export_dir: Path, held_texts: list[str], temperature: float) -> dict:
    """Corrupt held-out text with the exported generator as training did (same temperature); score the exported
    discriminator on it."""
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(export_dir / "discriminator")
    gen = AutoModelForMaskedLM.from_pretrained(export_dir / "generator").eval()
    disc = AutoModelForPreTraining.from_pretrained(export_dir / "discriminator").eval()
    g = torch.Generator().manual_seed(0)
    scores, labels = [], []
    for text in held_texts:
        enc = tok(text, truncation=True, max_length=128, return_tensors="pt")
        ids = enc["input_ids"]
        inner = torch.arange(1, ids.shape[1] - 1)
        pick = inner[torch.randperm(len(inner), generator=g)[: max(1, int(0.15 * len(inner)))]]
        masked = ids.clone()
        masked[0, pick] = tok.mask_token_id
        with torch.no_grad():
            probs = torch.softmax(gen(masked).logits[0, pick] / temperature, -1)
            sampled = torch.multinomial(probs, 1, generator=g).squeeze(1)
            corrupted = ids.clone()
            corrupted[0, pick] = sampled
            logits = disc(corrupted).logits[0]
        y = (corrupted[0] != ids[0])
        scores.append(logits[1:-1])
        labels.append(y[1:-1])
    s, y = torch.cat(scores), torch.cat(labels)
    p = y.float().mean().item()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s, y.float()).item()
    prior = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    order = torch.argsort(s)
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    n_pos, n_neg = y.sum().item(), (~y).sum().item()
    auc = (ranks[y].sum().item() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    pred = s > 0
    tp = (pred & y).sum().item()
    return {"tokens": len(s), "replaced_share": p, "rtd_loss": bce, "prior_loss": prior, "auc": auc,
            "precision": tp / max(1, pred.sum().item()), "recall": tp / max(1, n_pos),
            "baseline_accuracy": 1 - p, "accuracy": (pred == y).float().mean().item()}


def show_examples(export_dir: Path, held_texts: list[str]) -> None:
    from transformers import AutoModelForPreTraining, AutoTokenizer, pipeline
    fill = pipeline("fill-mask", model=str(export_dir / "generator"), tokenizer=str(export_dir / "generator"))
    tok = AutoTokenizer.from_pretrained(export_dir / "discriminator")
    print("\nfill-mask on held-out sentences (exported generator, pipeline('fill-mask')):")
    shown = 0
    for text in held_texts:
        sentence = next((s.strip() + "." for s in text.split(". ") if 8 <= len(s.split()) <= 20), None)
        if sentence is None:
            continue
        words = sentence.split()
        target = max(range(1, len(words) - 1), key=lambda i: len(words[i].strip(",.")) if words[i].isalpha() else 0)
        words[target] = tok.mask_token
        masked = " ".join(words)
        guesses = ", ".join(f"{r['token_str'].strip()!r} {r['score']:.2f}" for r in fill(masked, top_k=3))
        print(f"  {masked}\n    -> {guesses}")
        shown += 1
        if shown == 4:
            break
    disc = AutoModelForPreTraining.from_pretrained(export_dir / "discriminator").eval()
    original = "The government said on Tuesday that the new law would help families pay for their homes ."
    corrupted = "The government said on Tuesday that the new law would help elephants pay for their homes ."
    enc = tok(corrupted, return_tensors="pt")
    with torch.no_grad():
        prob = torch.sigmoid(disc(**enc).logits[0])
    print(f"\ndiscriminator verdicts (P(replaced)) on a corrupted sentence; original: {original!r}")
    toks = tok.convert_ids_to_tokens(enc["input_ids"][0])
    print("  " + " ".join(f"{t}:{p:.2f}" + ("*" if p > 0.5 else "") for t, p in zip(toks[1:-1], prob[1:-1])))


def main() -> int:
    t0 = time.time()
    RUN.mkdir(parents=True, exist_ok=True)
    train_dirs, held = corpus()
    tok_dir = RUN / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        gpt_ds("tokenizer", "train", "--input", *map(str, train_dirs), "--vocab-size", "8000", "--out", str(tok_dir))
    store = RUN / "store"
    if not (store / "manifest.json").is_file():
        gpt_ds("prepare", "--input", *map(str, train_dirs), "--tokenizer", str(tok_dir), "--out", str(store),
               "--workers", "2")
    gpt_ds("pretrain", "tiny", f"run.dir={RUN}", f"data.sources=[{store}]", f"data.tokenizer={tok_dir}",
           f"train.max_steps={STEPS}", "logging.progress_bar=false", "logging.every=20", "--nproc", "2")
    export_dir = RUN / "export"
    gpt_ds("export", str(RUN), "--out", str(export_dir), "--verify")
    curve(RUN)
    show_examples(export_dir, held)
    import yaml
    temperature = yaml.safe_load((RUN / "config.yaml").read_text())["objective"]["temperature"]
    ev = evaluate(export_dir, held, temperature)
    print(f"\nheld-out replaced-token detection ({ev['tokens']} tokens of {HELD_OUT} unseen articles, corrupted by "
          f"the exported generator at T={temperature}):\n  AUC {ev['auc']:.3f} (0.5 = chance), RTD loss {ev['rtd_loss']:.4f} vs "
          f"{ev['prior_loss']:.4f} for the all-'original' prior, precision {ev['precision']:.3f}, recall "
          f"{ev['recall']:.3f}, accuracy {ev['accuracy']:.3f} vs {ev['baseline_accuracy']:.3f}")
    (RUN / "demo_eval.json").write_text(json.dumps(ev, indent=1))
    ok = ev["auc"] > 0.7 and ev["rtd_loss"] < ev["prior_loss"]
    print(f"\n{'OK' if ok else 'NOT LEARNED'}: the discriminator {'beats' if ok else 'does not beat'} the "
          f"all-'original' baseline on held-out text. Total {time.time() - t0:.0f} s. Export: {export_dir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
