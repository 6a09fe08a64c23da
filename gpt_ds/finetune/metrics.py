"""Classification figures (scikit-learn's definitions) and their median over fine-tuning seeds.

Accuracy alone hides a classifier that predicts the majority class of an imbalanced set (SMS spam: 87% "ham"), so
macro-F1 and Matthews' correlation are reported beside it. Fine-tuning a small encoder varies a lot from seed to seed:
comparisons use the median over seeds, never one run, and say how likely the seeds alone would part two medians
that far (a rank test over the per-seed figures).
"""
from __future__ import annotations

import statistics

METRICS = ("accuracy", "macro_f1", "mcc")


def classification_metrics(labels: list[int], preds: list[int], num_labels: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    if not labels:
        return {}
    classes = list(range(num_labels))
    return {"accuracy": float(accuracy_score(labels, preds)),
            "macro_f1": float(f1_score(labels, preds, labels=classes, average="macro", zero_division=0)),
            "mcc": float(matthews_corrcoef(labels, preds)),
            "examples": len(labels)}


def median_over_seeds(per_seed: list[dict], split: str) -> dict[str, float]:
    """Each metric's median over the seeds that report the split."""
    rows = [r[split] for r in per_seed if r.get(split)]
    if not rows:
        return {}
    return {m: statistics.median(r[m] for r in rows) for m in METRICS}


def seed_scores(result: dict, split: str = "test", metric: str = "accuracy") -> list[float]:
    """Each seed's figure in a `gpt-ds finetune` JSON line, at the setting its validation split chose."""
    return [r[split][metric] for r in result["seeds"] if r.get(split)]


def seeds_p_value(a: list[float], b: list[float]) -> float | None:
    """Two-sided Mann-Whitney U over two models' per-seed figures: no assumption that fine-tuning noise is normal
    (one collapsed seed is common at 500 labels). None where either side has a single seed."""
    if min(len(a), len(b)) < 2:
        return None
    from scipy.stats import mannwhitneyu
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
