"""What an exported generator + discriminator pair learned, read from the Hugging Face folders alone.

- `rtd_report`: held-out text corrupted the way training corrupts it (15% of the tokens masked and filled by the
  exported generator at the training temperature), scored by the exported discriminator: AUC, loss against the
  all-"original" prior, precision and recall. Beside it, the AUC of a **token-identity** baseline that scores each
  token by how often that token id was a replacement in corrupted training text, ignoring its context. A discriminator
  that does no better than that baseline has learned token statistics, not language, and will not help a downstream
  task.
- `embedding_geometry`: how much of the word-embedding table lies along its first principal direction, and how alike
  two tokens' rows are. Random init: ~1% and ~0. A table dominated by one direction
  (the softmax's frequency direction, pushed into every row by the output layer's dense gradient) makes all tokens
  look alike to the first layer.
- `order_sensitivity`: whether the exported masked LM reads word order (accuracy and KL with the context shuffled);
  a model still in MLM's first, bag-of-words phase does not. With `fit_texts`, also the cross-entropy of word
  frequencies alone at the same masked positions: a masked LM no better than that has learned only how common each
  piece is, and its fill-mask guesses are the most frequent pieces whatever the sentence.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from gpt_ds.export import load_discriminator
from gpt_ds.model.hf_config import usable_positions
from gpt_ds.model.priors import smoothed_log_frequencies


def corrupt(texts: list[str], tokenizer, generator, temperature: float, *, mask_prob: float = 0.15,
            max_length: int | None = None, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(corrupted ids, replaced labels) per text, at most max_length tokens (default: what the generator's positions
    allow); [CLS]/[SEP] are never picked."""
    g = torch.Generator().manual_seed(seed)
    max_length = max_length or usable_positions(generator.config)
    out = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
        inner = torch.arange(1, ids.shape[1] - 1)
        if len(inner) == 0:
            continue
        pick = inner[torch.randperm(len(inner), generator=g)[: max(1, int(mask_prob * len(inner)))]]
        masked = ids.clone()
        masked[0, pick] = tokenizer.mask_token_id
        with torch.no_grad():
            probs = torch.softmax(generator(masked).logits[0, pick].double() / temperature, -1)
        corrupted = ids.clone()
        corrupted[0, pick] = torch.multinomial(probs, 1, generator=g).squeeze(1)
        out.append((corrupted[0], corrupted[0] != ids[0]))
    return out


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(labels.numpy(), scores.double().numpy()))


def token_identity_scores(fit: list[tuple[torch.Tensor, torch.Tensor]], vocab_size: int) -> torch.Tensor:
    """log-odds of "replaced" per token id, counted on corrupted text (add-one smoothed)."""
    replaced = torch.ones(vocab_size, dtype=torch.float64)
    kept = torch.ones(vocab_size, dtype=torch.float64)
    for ids, y in fit:
        replaced.index_add_(0, ids[y], torch.ones(int(y.sum()), dtype=torch.float64))
        kept.index_add_(0, ids[~y], torch.ones(int((~y).sum()), dtype=torch.float64))
    return (replaced / kept).log()


def rtd_report(export_dir: Path, held_texts: list[str], fit_texts: list[str], temperature: float) -> dict:
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    export_dir = Path(export_dir)
    tok = AutoTokenizer.from_pretrained(export_dir / "discriminator")
    gen = AutoModelForMaskedLM.from_pretrained(export_dir / "generator").eval()
    disc = load_discriminator(export_dir / "discriminator")
    held = corrupt(held_texts, tok, gen, temperature, seed=0)
    scores, labels, ids = [], [], []
    for corrupted, y in held:
        with torch.no_grad():
            logits = disc(corrupted[None]).logits[0]
        scores.append(logits[1:-1])
        labels.append(y[1:-1])
        ids.append(corrupted[1:-1])
    s, y, tokens = torch.cat(scores), torch.cat(labels), torch.cat(ids)
    p = y.float().mean().item()
    pred = s > 0
    tp = (pred & y).sum().item()
    identity = token_identity_scores(corrupt(fit_texts, tok, gen, temperature, seed=1), disc.config.vocab_size)
    return {"tokens": len(s), "replaced_share": p,
            "rtd_loss": torch.nn.functional.binary_cross_entropy_with_logits(s, y.float()).item(),
            "prior_loss": -(p * math.log(p) + (1 - p) * math.log(1 - p)), "auc": auc(s, y),
            "token_identity_auc": auc(identity[tokens], y),
            "precision": tp / max(1, pred.sum().item()), "recall": tp / max(1, y.sum().item()),
            "baseline_accuracy": 1 - p, "accuracy": (pred == y).float().mean().item()}


def embedding_geometry(model, skip: int = 5) -> dict:
    """First-principal-direction share of the word table (special tokens skipped) and the rows' mean cosine."""
    table = model.base_model.embeddings.word_embeddings.weight.detach()[skip:].double()
    sv = torch.linalg.svdvals(table)
    g = torch.Generator().manual_seed(0)
    unit = torch.nn.functional.normalize(table[torch.randperm(len(table), generator=g)[:2000]], dim=-1)
    cos = unit @ unit.T
    return {"top1_share": (sv[0] ** 2 / (sv ** 2).sum()).item(),
            "mean_cos": cos[~torch.eye(len(unit), dtype=torch.bool)].mean().item()}


@torch.no_grad()
def hidden_geometry(model, tokenizer, texts: list[str], max_length: int = 64) -> list[dict]:
    """Per layer (embeddings first): the share of the tokens' variance on the first principal direction and the
    effective number of directions (exp of the entropy of the variance spectrum), over every real token and over the
    mean-pooled sentences. A one-way target (RTD) concentrates the top layers on one direction (docs/results.md §8)."""
    model.eval()
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    hidden = model.base_model(**enc, output_hidden_states=True).hidden_states
    real = enc["attention_mask"].bool()

    def spectrum(x: torch.Tensor) -> dict:
        sv = torch.linalg.svdvals((x - x.mean(0)).double())
        p = sv ** 2 / (sv ** 2).sum()
        return {"top1_share": p[0].item(), "effective_dims": torch.exp(-(p * torch.log(p + 1e-30)).sum()).item()}

    out = []
    for h in hidden:
        pooled = (h * real[..., None]).sum(1) / real.sum(1, keepdim=True)
        out.append({"tokens": spectrum(h[real]), "mean_pooled": spectrum(pooled)})
    return out


def order_sensitivity(generator_dir: Path, texts: list[str], *, masks: int = 10, seed: int = 0,
                      fit_texts: list[str] | None = None) -> dict:
    """Does the masked LM read word order? Its masked-token accuracy and cross-entropy (nats) on held-out text, and
    again with the context's positions shuffled (outputs mapped back to their tokens), plus the mean KL between the two
    predictions. A model that has only learned which words co-occur (the first phase of MLM training) scores the same
    on both. `fit_texts`: also the cross-entropy of their word frequencies at the same positions (the phase before)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(generator_dir)
    model = AutoModelForMaskedLM.from_pretrained(generator_dir).eval()
    unigram = None
    if fit_texts is not None:
        ids = [i for text in fit_texts for i in tok(text, add_special_tokens=False, verbose=False)["input_ids"]]
        unigram = smoothed_log_frequencies(torch.tensor(ids, dtype=torch.long), model.config.vocab_size,
                                           tok.all_special_ids)
    g = torch.Generator().manual_seed(seed)
    hits = hits_shuffled = n = 0
    kl, nll, nll_shuffled, nll_unigram = [], [], [], []
    for text in texts:
        ids = tok(text, truncation=True, max_length=usable_positions(model.config),  # MPNet's table holds 2 more
                  return_tensors="pt")["input_ids"]
        length = ids.shape[1]
        if length < masks + 4:
            continue
        pos = torch.randperm(length - 2, generator=g)[:masks] + 1
        masked = ids.clone()
        masked[0, pos] = tok.mask_token_id
        perm = torch.randperm(length - 2, generator=g) + 1  # new position 1+i holds old position perm[i]
        shuffled = masked.clone()
        shuffled[0, 1:-1] = masked[0, perm]
        with torch.no_grad():
            logp = model(masked).logits[0].double().log_softmax(-1)
            out = model(shuffled).logits[0].double().log_softmax(-1)
        logp_shuffled = torch.empty_like(out)
        logp_shuffled[perm] = out[1:-1]
        target = ids[0, pos]
        kl.append((logp[pos].exp() * (logp[pos] - logp_shuffled[pos])).sum(-1).mean().item())
        nll.append(-logp[pos, target])
        nll_shuffled.append(-logp_shuffled[pos, target])
        if unigram is not None:
            nll_unigram.append(-unigram[target])
        hits += (logp[pos].argmax(-1) == target).sum().item()
        hits_shuffled += (logp_shuffled[pos].argmax(-1) == target).sum().item()
        n += masks

    def mean(parts: list[torch.Tensor]) -> float:
        return torch.cat(parts).mean().item() if parts else float("nan")
    result = {"accuracy": hits / max(1, n), "accuracy_shuffled": hits_shuffled / max(1, n),
              "kl_shuffled": sum(kl) / max(1, len(kl)), "masked_tokens": n,
              "cross_entropy": mean(nll), "cross_entropy_shuffled": mean(nll_shuffled)}
    if unigram is not None:
        result["unigram_cross_entropy"] = mean(nll_unigram)
    return result
