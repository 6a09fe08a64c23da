"""Step metrics: ELECTRA diagnostics summed over ranks, then written as JSONL + TensorBoard + a progress bar (rank 0).

A run that logs only the summed loss cannot tell a discriminator that learned nothing (RTD loss at the entropy of the
replaced share) from one that works, so the RTD loss, its prior, accuracy, precision, recall and AUC are logged apart.
"""
from __future__ import annotations

import json
import math
import resource
import sys
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from gpt_ds.train.metrics_file import NAME, drop_rows_after

AUC_BINS = 512


# What StepStats sums, one float64 slot each (one tensor, so the log step reduces them in one collective)
SLOTS = ("gen_loss_sum", "masked", "gen_correct", "replaced",  # the generator, over masked positions
         "shown_mask", "gen_correct_at_mask",  # the generator at the positions its input shows as [MASK]
         "disc_loss_sum", "tokens", "disc_correct", "true_positives", "predicted_replaced", "replaced_tokens",
         "clm_loss_sum", "clm_masked",  # the discriminator's corrective LM (objective.disc_mlm_weight > 0)
         "scl_loss_sum", "scl_batches", "scl_correct", "scl_picks")  # its sequence contrastive loss
_AT = {name: i for i, name in enumerate(SLOTS)}


class StepStats:
    """Sums over the micro-batches since the last log, kept on the device: no host sync in the training step.

    reduce() sums them over ranks (the one collective, at log steps only) and turns them into rates.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(len(SLOTS), dtype=torch.float64, device=device)
        self.pos_hist = torch.zeros(AUC_BINS, dtype=torch.float64, device=device)
        self.neg_hist = torch.zeros(AUC_BINS, dtype=torch.float64, device=device)

    def _add(self, slot: str, value) -> None:
        self.sums[_AT[slot]] += value

    def add_generator(self, loss: torch.Tensor, n_masked: int, correct: torch.Tensor, replaced: torch.Tensor,
                      shown_mask: torch.Tensor | None = None) -> None:
        """`shown_mask`: (N,) which masked positions the generator saw as [MASK]; at the others (ELECTRA keeps 15% of
        them) the answer is in its input, and copying it is learned long before context is (docs/results.md §8.7)."""
        self._add("gen_loss_sum", loss.detach().double() * n_masked)
        self._add("masked", n_masked)
        self._add("gen_correct", correct.sum())
        self._add("replaced", replaced.sum())
        if shown_mask is not None:
            self._add("shown_mask", shown_mask.sum())
            self._add("gen_correct_at_mask", (correct & shown_mask).sum())

    def add_discriminator(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        y = labels.bool()
        pred = logits > 0
        self._add("disc_loss_sum", loss.detach().double() * logits.numel())
        self._add("tokens", logits.numel())
        self._add("disc_correct", (pred == y).sum())
        self._add("true_positives", (pred & y).sum())
        self._add("predicted_replaced", pred.sum())
        self._add("replaced_tokens", y.sum())
        bins = (torch.sigmoid(logits.double()) * AUC_BINS).long().clamp(0, AUC_BINS - 1)
        self.pos_hist += torch.bincount(bins[y], minlength=AUC_BINS).double()
        self.neg_hist += torch.bincount(bins[~y], minlength=AUC_BINS).double()

    def add_corrective(self, loss: torch.Tensor, n_masked: int) -> None:
        self._add("clm_loss_sum", loss.detach().double() * n_masked)
        self._add("clm_masked", n_masked)

    def add_contrastive(self, loss: torch.Tensor, correct: torch.Tensor, views: int) -> None:
        self._add("scl_loss_sum", loss.detach().double())
        self._add("scl_batches", 1)
        self._add("scl_correct", correct)
        self._add("scl_picks", 2 * views)

    def reduce(self) -> dict:
        packed = torch.cat([self.sums, self.pos_hist, self.neg_hist])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(packed)
        packed = packed.cpu()
        n = len(SLOTS)
        s = dict(zip(SLOTS, packed[:n].tolist()))
        pos, neg = packed[n:n + AUC_BINS], packed[n + AUC_BINS:]
        out = {}
        if s["masked"] > 0:
            out["gen_loss"] = s["gen_loss_sum"] / s["masked"]
            out["gen_acc"] = s["gen_correct"] / s["masked"]
            out["replaced_share"] = s["replaced"] / s["masked"]
        if s["shown_mask"] > 0:
            out["gen_acc_at_mask"] = s["gen_correct_at_mask"] / s["shown_mask"]
        if s["tokens"] > 0:
            out["disc_loss"] = s["disc_loss_sum"] / s["tokens"]
            out["disc_acc"] = s["disc_correct"] / s["tokens"]
            out["disc_precision"] = s["true_positives"] / s["predicted_replaced"] if s["predicted_replaced"] > 0 \
                else 0.0
            out["disc_recall"] = s["true_positives"] / s["replaced_tokens"] if s["replaced_tokens"] > 0 else 0.0
            p = s["replaced_tokens"] / s["tokens"]
            # the RTD loss of a discriminator that only knows the replaced share
            out["disc_loss_prior"] = -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0
            out["disc_auc"] = histogram_auc(pos, neg)
        if s["clm_masked"] > 0:
            out["disc_mlm_loss"] = s["clm_loss_sum"] / s["clm_masked"]
        if s["scl_batches"] > 0:
            out["disc_scl_loss"] = s["scl_loss_sum"] / s["scl_batches"]
            out["disc_scl_acc"] = s["scl_correct"] / s["scl_picks"]
        return out


def histogram_auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score of a replaced token > score of an original one), ties counted half."""
    n_pos, n_neg = pos.sum().item(), neg.sum().item()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    below = torch.cumsum(neg, 0) - neg
    return float(((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg)).item())


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def peak_memory_gib() -> float:
    """This process's peak: the accelerator's allocator on a GPU, the resident set on the CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def progress_line(step: int, total: int, record: dict, elapsed: float, steps_per_s: float) -> str:
    """One greppable line per logging interval for job logs (docs/configuration.md, "Progress lines"):
    `gpt_ds: step S/T (P%) loss L mlm M mlm_acc A [rtd R auc U] [clm C] [scl S] tok/s N [mfu F] mem G GiB elapsed H:MM:SS eta H:MM:SS`.
    The fields keep their names and order; absent ones (no discriminator, no MFU) are left out."""
    r = record
    parts = [f"gpt_ds: step {step}/{total} ({100 * step / max(1, total):.1f}%)", f"loss {r.get('loss', float('nan')):.4f}",
             f"mlm {r.get('gen_loss', float('nan')):.4f}", f"mlm_acc {r.get('gen_acc', float('nan')):.3f}"]
    if "disc_loss" in r:
        parts += [f"rtd {r['disc_loss']:.4f}", f"auc {r.get('disc_auc', float('nan')):.3f}"]
    if "disc_mlm_loss" in r:
        parts.append(f"clm {r['disc_mlm_loss']:.4f}")
    if "disc_scl_loss" in r:
        parts.append(f"scl {r['disc_scl_loss']:.4f}")
    parts.append(f"tok/s {r.get('tokens_per_s', 0):.0f}")
    if "mfu" in r:
        parts.append(f"mfu {r['mfu']:.3f}")
    eta = (total - step) / steps_per_s if steps_per_s > 0 else 0.0
    parts += [f"mem {peak_memory_gib():.2f} GiB", f"elapsed {_clock(elapsed)}", f"eta {_clock(eta)}"]
    return " ".join(parts)


class WandbSink:
    """Weights & Biases beside metrics.jsonl and TensorBoard (logging.wandb). One W&B run per gpt_ds run folder: its id
    is kept in RUN_DIR/wandb_id, so a resumed or requeued job continues the same W&B run (W&B keeps the first record
    of a step that is run again after a resume; metrics.jsonl keeps the last). Offline by default: nothing leaves the
    machine until `wandb sync RUN_DIR/wandb/offline-run-*`."""

    def __init__(self, run_dir: Path, name: str, project: str, mode: str, config: dict):
        import wandb
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow", dir=str(run_dir), mode=mode,
                              config=config, settings=wandb.Settings(console="off", quiet=True))

    def log(self, step: int, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                      and math.isfinite(v)}, step=step)

    def close(self) -> None:
        self.run.finish()


class MetricsLogger:
    """Rank 0 only writes; other ranks hold a no-op logger."""

    def __init__(self, run_dir: Path, enabled: bool, *, tensorboard: bool, progress_bar: bool, total_steps: int,
                 start_step: int, wandb: dict | None = None):
        self.enabled = enabled
        self.file = None
        self.tb = None
        self.bar = None
        self.wandb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        drop_rows_after(run_dir / NAME, start_step)
        self.file = open(run_dir / NAME, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                # purge_step: TensorBoard hides what an earlier attempt logged past the step resumed from
                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
            except ImportError:  # tensorboard is a listed dependency; a trimmed install still trains
                self.tb = None
        if wandb:  # {name, project, mode, config}
            self.wandb = WandbSink(run_dir, **wandb)
        if progress_bar and sys.stderr.isatty():  # a terminal gets a bar; a job log gets progress_line()s
            self.bar = tqdm(total=total_steps, initial=start_step, desc="pretrain", dynamic_ncols=True,
                            mininterval=2.0)
        self.t0 = time.time()
        self.total_steps, self.start_step = total_steps, start_step

    def log(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **record}
        self.file.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(step, record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}",
                                 rtd=f"{record.get('disc_loss', float('nan')):.3f}",
                                 tok_s=f"{record.get('tokens_per_s', 0):.0f}", refresh=False)
        else:
            print(progress_line(step, self.total_steps, record, time.time() - self.t0,
                                (step - self.start_step) / max(1e-9, time.time() - self.t0)),
                  file=sys.stderr, flush=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close()
        if self.file is not None:
            self.file.close()
