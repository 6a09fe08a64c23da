"""The training loop: mask -> generator (sample) -> discriminator -> both engines step; checkpoints, logs, preemption.

Losses are normalised by the GLOBAL number of masked (generator) and non-padding (discriminator) tokens of the step,
counted with one small all_reduce before the micro-batches run. The gradient is then the gradient of the global
token mean whatever the number of ranks or the micro-batch size, so a run resumed on another layout with the same
global batch continues the same optimisation.
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from gpt_ds import __version__
from gpt_ds.checkpoint.compat import check_resume_compatible
from gpt_ds.config import Config, batch_layout, dump_config
from gpt_ds.data.sources import open_dataset
from gpt_ds.data.sampler.loader import StepLoader
from gpt_ds.watchdog import Watchdog
from gpt_ds.dist.agree import once_across_ranks, rank0_decides
from gpt_ds.dist.preempt import REQUEUE_EXIT_CODE, PreemptionHandler
from gpt_ds.errors import GptDsError
from gpt_ds.model.masking import STREAM_SAMPLE, mask_batch, replaceable
from gpt_ds.model.priors import unigram_log_probs
from gpt_ds.model.sizes import scl_view_rows
from gpt_ds import checkpoint
from gpt_ds.checkpoint import run_files
from gpt_ds.train.engines import build_engines
from gpt_ds.flops import measure_matmul_flops, step_flops
from gpt_ds.train.metrics import MetricsLogger, StepStats


def loss_weights(objective, electra: bool) -> dict[str, float]:
    """The pretraining loss, stated once: sum over terms of weight x mean loss, the generator's MLM loss over masked
    positions, (ELECTRA) the discriminator's RTD loss over every scored token and its corrective LM loss over the masked
    positions. The backward scales each engine's micro-batch loss by these weights; the logged total uses the same
    ones."""
    if not electra:
        return {"gen": 1.0}
    weights = {"gen": objective.gen_weight, "disc": objective.disc_weight}
    if objective.disc_mlm_weight > 0:
        weights["disc_mlm"] = objective.disc_mlm_weight
    if objective.disc_scl_weight > 0:
        weights["disc_scl"] = objective.disc_scl_weight
    return weights


class Trainer:
    def __init__(self, cfg: Config, *, rank: int = 0, world_size: int = 1, resume: str | None = None):
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.layout = batch_layout(cfg, world_size)
        self.dataset = once_across_ranks(self._open_data, rank, world_size)  # each problem once, not once per rank
        data = self.dataset
        self.vocab_size = cfg.model.vocab_size or data.vocab_size
        self.special_ids = sorted({data.pad_id, data.cls_id, data.sep_id, data.mask_id, data.unk_id})
        # synthetic rows are uniform random ids: their prior is uniform already, an estimate would only add noise
        priors = cfg.model.init_output_priors and not cfg.data.synthetic
        unigram = unigram_log_probs(data, self.vocab_size, self.special_ids) if priors else None
        self.engines = build_engines(cfg, self.layout, self.vocab_size, data.pad_id, unigram)
        self.device = self.engines.generator.device
        self.step = 0
        self.rng_state = None  # set right before the loop on resume: nothing in between may draw from it
        self.watchdog: Watchdog | None = None  # the loop's (train())
        resume_from = self._find_resume(resume if resume is not None else cfg.checkpoint.resume)
        if resume_from is not None:
            self._resume(resume_from)
        if rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.run_dir / "config.yaml")
            run_files.snapshot(self.run_dir, data.tokenizer_dir, self.engines.ds_configs)
        self.flops = step_flops(cfg, self.vocab_size)
        peak = cfg.logging.peak_tflops * 1e12 if cfg.logging.peak_tflops > 0 else 0.0
        if peak == 0.0:  # this process's own matmul rate: MFU against what the device shows here
            peak = measure_matmul_flops(device=self.device, precision=cfg.train.precision)
        self.peak_flops = peak * world_size
        # SIGINT too: a rank interrupted inside a collective would leave the others waiting in it for ever; the flag
        # stops every rank at the same step boundary (a second Ctrl-C stops at once)
        self.preemption = PreemptionHandler((signal.SIGUSR1, signal.SIGTERM, signal.SIGINT))

    # ------------------------------------------------------------------------------------------------ resume / save
    def _state(self) -> dict:
        data = self.dataset
        return {"step": self.step, "consumed_samples": self.step * self.layout.global_batch,
                "world_size": self.world_size, "global_batch": self.layout.global_batch,
                "micro_batch": self.layout.micro_batch, "grad_accum": self.layout.grad_accum,
                "config": self.cfg.to_dict(),
                "tokenizer_fingerprint": data.tokenizer_fingerprint, "tokenizer_dir": data.tokenizer_dir,
                "vocab_size": self.vocab_size, "pad_id": data.pad_id, "mask_id": data.mask_id,
                "gpt_ds_version": __version__}

    def _open_data(self):
        cfg, data = self.cfg, open_dataset(self.cfg)
        if len(data) < self.layout.global_batch:  # every step would repeat rows within itself: not a corpus, a typo
            raise GptDsError(f"data.sources hold {len(data)} rows of {cfg.data.seq_len} tokens, fewer than one global "
                             f"batch ({self.layout.global_batch}); add text, or lower train.global_batch / "
                             f"data.seq_len")
        if 0 < cfg.model.vocab_size < data.vocab_size:
            raise GptDsError(f"model.vocab_size {cfg.model.vocab_size} is smaller than the tokenizer's "
                             f"{data.vocab_size}; set model.vocab_size=0 to take the tokenizer's")
        return data

    def _find_resume(self, resume: str) -> Path | None:
        """Rank 0 verifies the checkpoints and tells the others which step to load (reading every file only when the
        check before launch has not: gpt_ds.checkpoint.VERIFIED_ENV)."""
        found = rank0_decides(lambda: checkpoint.find_resume(self.ckpt_dir, resume), self.rank, self.world_size)
        return None if found is None else Path(found)

    def _resume(self, step_dir: Path) -> None:
        saved = checkpoint.read_state(step_dir)
        check_resume_compatible(saved, self.cfg, self.world_size, step_dir)
        if saved["tokenizer_fingerprint"] != self.dataset.tokenizer_fingerprint:
            raise GptDsError(f"checkpoint {step_dir} was trained with another tokenizer (fingerprint "
                             f"{saved['tokenizer_fingerprint']} vs {self.dataset.tokenizer_fingerprint} now); resume "
                             f"with the same data.tokenizer or start a new run (run.name=...)")
        state = checkpoint.load(step_dir, self.engines, self.rank, self.world_size)
        self.step = int(state["step"])
        self.rng_state = state["rng_state"]
        if self.rank == 0:
            print(f"gpt_ds: resumed from {step_dir} at step {self.step}", file=sys.stderr, flush=True)

    def save(self) -> Path:
        if self.watchdog is not None:  # every save, periodic or on a stop: a collective the other ranks must join
            self.watchdog.enter(f"saving the checkpoint of step {self.step}")
        t0 = time.perf_counter()
        path = checkpoint.save(self.ckpt_dir, self.step, self.engines, self._state(), self.rank,
                               self.cfg.checkpoint.keep_last)
        if self.rank == 0:
            print(f"gpt_ds: checkpoint step {self.step} saved to {path} ({time.perf_counter() - t0:.1f} s)",
                  file=sys.stderr, flush=True)
        return path

    # ---------------------------------------------------------------------------------------------------- one step
    def mask(self, batch: dict) -> dict:
        """The loader's transform (its background thread): the batch's MaskedBatch under "masked", under "rtd_mask"
        the tokens replaced-token detection scores, under "shown_mask" the masked positions shown as [MASK]."""
        o, data = self.cfg.objective, self.dataset
        batch["masked"] = mask_batch(batch["input_ids"], batch["attention_mask"], batch["sample_numbers"],
                                     special_ids=self.special_ids, mask_id=data.mask_id, vocab_size=data.vocab_size,
                                     mask_prob=o.mask_prob, mask_token_frac=o.mask_token_frac, keep_frac=o.keep_frac,
                                     random_frac=o.random_frac, seed=self.cfg.run.seed)
        batch["rtd_mask"] = self.rtd_mask(batch)
        m = batch["masked"]  # which masked positions the generator sees as [MASK] (the rest are kept): a metric
        batch["shown_mask"] = m.masked_ids.reshape(-1)[m.positions] == data.mask_id
        return batch

    def make_loader(self) -> StepLoader:
        """This rank's masked micro-batches from the current step on (the benches use it too)."""
        L = self.layout
        return StepLoader(self.dataset, global_batch=L.global_batch, micro_batch=L.micro_batch,
                          grad_accum=L.grad_accum, world_size=L.world_size, rank=self.rank, start_step=self.step,
                          prefetch=self.cfg.data.prefetch, transform=self.mask)

    def rtd_mask(self, batch: dict) -> torch.Tensor:
        """The tokens replaced-token detection is scored on: every real token, or (rtd_on_specials=false) those that
        can be replaced."""
        if self.cfg.objective.rtd_on_specials:
            return batch["attention_mask"].bool()
        return replaceable(batch["input_ids"], batch["attention_mask"], self.special_ids)

    def train_step(self, micro_batches: list[dict], stats: StepStats) -> None:
        """One optimizer step; diagnostics accumulate into `stats` (summed over ranks only when logged)."""
        L = self.layout
        gen, disc = self.engines.generator, self.engines.discriminator
        if self.step < self.cfg.objective.disc_start_step:
            disc = None  # generator first: the discriminator waits (every rank decides alike, from the step)
        weights = loss_weights(self.cfg.objective, disc is not None)
        masked = [b["masked"] for b in micro_batches]
        loss_masks = [b["rtd_mask"] for b in micro_batches]
        counts = torch.tensor([sum(m.num_masked for m in masked),
                               sum(int(m.sum()) for m in loss_masks)], dtype=torch.float64,
                              device=self.device)  # NCCL reduces device tensors only
        if dist.is_initialized():
            dist.all_reduce(counts)
        total_masked, total_tokens = max(counts[0].item(), 1.0), max(counts[1].item(), 1.0)
        factor = L.world_size * L.grad_accum  # DeepSpeed divides by both; the global normalisation undoes it
        sample_seed = self.cfg.run.seed ^ STREAM_SAMPLE
        for batch, mb, loss_mask in zip(micro_batches, masked, loss_masks):
            dev = {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask", "token_type_ids")}
            k = scl_view_rows(self.cfg.objective, dev["input_ids"].shape[0]) if disc is not None else 0
            view = {"view_ids": dev["input_ids"][:k]} if k else {}
            gen_out = gen(mb.masked_ids.to(self.device), dev["attention_mask"], dev["token_type_ids"],
                          mb.positions.to(self.device), mb.targets.to(self.device), mb.row_ids.to(self.device),
                          dev["input_ids"], sample_seed, **view)
            n_masked = mb.num_masked
            replaced = (gen_out.sampled != mb.targets.to(self.device))
            stats.add_generator(gen_out.loss, n_masked, gen_out.correct, replaced, batch["shown_mask"].to(self.device))
            if disc is not None:
                labels = (gen_out.corrupted_ids != dev["input_ids"]).long()
                disc_out = disc(gen_out.corrupted_ids, dev["attention_mask"], dev["token_type_ids"], labels,
                                gen_out.base_embeds, loss_mask.to(self.device), mb.positions.to(self.device),
                                mb.targets.to(self.device), **view, scl_temperature=self.cfg.objective.scl_temperature)
                n_tokens = disc_out.logits.numel()
                stats.add_discriminator(disc_out.loss, disc_out.logits.float(), disc_out.labels)
                if disc_out.mlm_loss is not None:
                    stats.add_corrective(disc_out.mlm_loss, n_masked)
                if disc_out.scl_loss is not None:
                    stats.add_contrastive(disc_out.scl_loss, disc_out.scl_correct, k)
            gen.backward(gen_out.loss * (weights["gen"] * n_masked / total_masked * factor))
            if disc is not None:
                disc_loss = disc_out.loss * (weights["disc"] * n_tokens / total_tokens * factor)
                if disc_out.mlm_loss is not None:
                    disc_loss = disc_loss + disc_out.mlm_loss * (weights["disc_mlm"] * n_masked / total_masked *
                                                                 factor)
                if disc_out.scl_loss is not None:  # a mean per micro-batch: DeepSpeed's average over them is the step's
                    disc_loss = disc_loss + disc_out.scl_loss * weights["disc_scl"]
                disc.backward(disc_loss)
            gen.step()
            if disc is not None:
                disc.step()

    def summarize(self, stats: StepStats) -> dict:
        """The record of the steps accumulated in `stats` (a collective: every rank calls it)."""
        gen, disc = self.engines.generator, self.engines.discriminator
        out = stats.reduce()
        out["loss"] = sum(w * out.get(f"{term}_loss", 0.0) for term, w in
                          loss_weights(self.cfg.objective, disc is not None).items())
        out["lr"] = gen.get_lr()[0]
        for name, eng in (("gen", gen), ("disc", disc)):
            norm = eng.get_global_grad_norm() if eng is not None else None
            if norm is not None:
                out[f"{name}_grad_norm"] = float(norm)
        return out

    # ---------------------------------------------------------------------------------------------------- the loop
    def train(self) -> int:
        cfg = self.cfg
        loader = self.make_loader()
        wandb = dict(name=cfg.run.name, project=cfg.logging.wandb_project, mode=cfg.logging.wandb_mode,
                     config=cfg.to_dict()) if cfg.logging.wandb else None
        logger = MetricsLogger(self.run_dir, self.rank == 0, tensorboard=cfg.logging.tensorboard,
                               progress_bar=cfg.logging.progress_bar, total_steps=cfg.train.max_steps,
                               start_step=self.step, wandb=wandb)
        self.preemption.install()
        self.watchdog = watchdog = Watchdog(self.rank, cfg.train.watchdog_warn_s, cfg.train.watchdog_timeout_s).start()
        if self.rng_state is not None:
            torch.set_rng_state(self.rng_state)
        exit_code = 0
        t_last, steps_since = time.perf_counter(), 0
        try:
            stats = StepStats(self.device)
            for self.step in range(self.step, cfg.train.max_steps):
                watchdog.enter(f"step {self.step + 1}")
                self.train_step(loader.next_step(), stats)
                self.step += 1
                steps_since += 1
                logger.advance()
                if self.step % cfg.logging.every == 0 or self.step == cfg.train.max_steps:
                    record = self.summarize(stats)  # means over the steps since the last record
                    stats = StepStats(self.device)
                    dt = (time.perf_counter() - t_last) / steps_since
                    record["step_time_s"] = dt
                    record["tokens_per_s"] = self.flops["tokens"] / dt
                    record["tflops"] = self.flops["total"] / dt / 1e12
                    if self.peak_flops > 0:
                        record["mfu"] = self.flops["total"] / dt / self.peak_flops
                    logger.log(self.step, record)
                    t_last, steps_since = time.perf_counter(), 0
                if self.step % cfg.checkpoint.every == 0 or self.step == cfg.train.max_steps:
                    self.save()
                if self.step == cfg.train.stop_at:
                    if self.step % cfg.checkpoint.every != 0:
                        self.save()
                    break
                if self.step < cfg.train.max_steps and self.preemption.should_stop():
                    if self.step % cfg.checkpoint.every != 0:
                        self.save()
                    # Ctrl-C is a person stopping the run (130, the shell's code), not a preemption to requeue
                    exit_code = 128 + signal.SIGINT if self.preemption.signal_name == "SIGINT" else REQUEUE_EXIT_CODE
                    if self.rank == 0:
                        print(f"gpt_ds: {'interrupted' if exit_code != REQUEUE_EXIT_CODE else 'preempted'} "
                              f"({self.preemption.signal_name or 'signal on another rank'}); checkpoint at step "
                              f"{self.step}, exiting with {exit_code}"
                              f"{' for requeue' if exit_code == REQUEUE_EXIT_CODE else ''}", file=sys.stderr, flush=True)
                    break
        finally:
            watchdog.stop()
            loader.close()
            logger.close()
            self.preemption.uninstall()
        return exit_code
