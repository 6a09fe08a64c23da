"""`gpt-ds finetune MODEL_DIR --train F ...`: sequence classification on top of an exported encoder, on accelerate.

The recipe is ELECTRA's own (configure_finetuning.py): AdamW with weight decay, linear warmup then linear decay,
layer-wise learning-rate decay (each layer below the head learns `layer_decay` times slower than the one above),
gradient clipping at 1. The best validation point of each seed is kept (early selection); test figures are those
of that point. `--random-init` builds the same architecture without the pretrained weights: the control every claim
that pretraining helps needs. Devices and processes are accelerate's: `gpt-ds finetune` on one CPU or GPU, `accelerate
launch -m gpt_ds.cli finetune ...` on many; `--batch-size` is global, so both give the same optimisation.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModelForSequenceClassification, DataCollatorWithPadding
from transformers.utils import logging as hf_logging

from gpt_ds.errors import GptDsError
from gpt_ds.finetune.data import SPLITS, Task, encode, load_task, load_tokenizer
from gpt_ds.finetune.metrics import METRICS, classification_metrics, median_over_seeds
from gpt_ds.model.hf_config import usable_positions
from gpt_ds.model.relative_bias import local_bias_
from gpt_ds.model.weight_decay import depth_groups
from gpt_ds.train.schedule import make_scheduler


DEFAULT_LR = "1e-3"  # a random-init tiny encoder's best; exports often like 3e-3: compare with a search


def _number_list(text: str) -> list[float]:
    try:
        return [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': one number or several separated by commas") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="an exported Hugging Face folder (e.g. runs/demo/export/discriminator)")
    p.add_argument("--train", required=True, help="labeled training data: .jsonl/.csv/.tsv/.parquet or a "
                                                  "save_to_disk folder (a DatasetDict: its 'train' split)")
    p.add_argument("--validation", help="selection split (default: a fixed --validation-fraction of --train)")
    p.add_argument("--test", help="held-out split, scored at each seed's best validation point")
    p.add_argument("--text-field", default="text")
    p.add_argument("--text-pair-field", default=None, help="second text of sentence-pair tasks")
    p.add_argument("--label-field", default="label")
    p.add_argument("--seeds", type=int, default=3, help="fine-tuning runs with seeds first-seed, first-seed+1, ...")
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument("--out", default=None, help="where the best model (HF folder + tokenizer) and results.json go "
                                               "(default: runs/finetune/<model folder name>[-random-init])")
    p.add_argument("--no-save", action="store_true", help="report only; write no model")
    p.add_argument("--random-init", action="store_true", help="same architecture, no pretrained weights (control)")
    g = p.add_argument_group("recipe (ELECTRA's fine-tuning; defaults for a small encoder)")
    g.add_argument("--lr", type=_number_list, default=_number_list(DEFAULT_LR),
                   help="peak learning rate of the head; several, comma-separated (3e-4,1e-3,3e-3), are each run "
                        "with every seed and the one with the best median validation score is reported: the "
                        f"search every fair comparison needs (default {DEFAULT_LR})")
    g.add_argument("--layer-decay", type=float, default=0.8, help="layer-wise lr decay; 1 = off")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-ratio", type=float, default=0.1)
    g.add_argument("--epochs", type=_number_list, default=[3.0],
                   help="passes over the training rows; several, comma-separated (10,20), are searched like --lr "
                        "(every rate with every length; the best median validation score is reported)")
    g.add_argument("--batch-size", type=int, default=32, help="global batch (split over accelerate's processes)")
    g.add_argument("--max-length", type=int, default=0, help="tokens per text (default: the model's positions)")
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--evals-per-epoch", type=int, default=2, help="validation points per epoch for the selection")
    g.add_argument("--select-metric", choices=METRICS, default="accuracy")
    g.add_argument("--validation-fraction", type=float, default=0.1)
    g.add_argument("--train-rows", type=int, default=0,
                   help="train on a fixed random subset of this many rows (seed 0, the same for every model and "
                        "seed): the label-scarce setting; 0 = all")
    g.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                   help="default: accelerate's (its config / `accelerate launch` flags)")


def check_recipe(a: argparse.Namespace) -> None:
    bad = []
    def positive(values: list[float]) -> bool:
        return bool(values) and all(0 < x < float("inf") for x in values)

    for name, ok in (("lr", positive(a.lr)), ("layer-decay", 0 < a.layer_decay <= 1),
                     ("weight-decay", a.weight_decay >= 0), ("warmup-ratio", 0 <= a.warmup_ratio < 1),
                     ("epochs", positive(a.epochs)), ("batch-size", a.batch_size > 0), ("seeds", a.seeds >= 1),
                     ("max-length", a.max_length >= 0), ("evals-per-epoch", a.evals_per_epoch >= 1),
                     ("validation-fraction", 0 < a.validation_fraction < 1), ("max-grad-norm", a.max_grad_norm >= 0),
                     ("train-rows", a.train_rows >= 0)):
        if not ok:
            value = getattr(a, name.replace('-', '_'))
            bad.append(f"--{name} {','.join(f'{x:g}' for x in value) if isinstance(value, list) else value}")
    if bad:
        raise GptDsError(f"out of range: {', '.join(bad)} (see gpt-ds finetune --help)")


# ------------------------------------------------------------------------------------------------------- the model


def load_config(model_dir: Path, label_names: list[str]):
    if not (model_dir / "config.json").is_file():
        raise GptDsError(f"{model_dir}: no config.json; give an exported model folder (gpt-ds export --out X: "
                         f"X/discriminator)")
    return AutoConfig.from_pretrained(str(model_dir), num_labels=len(label_names),
                                      id2label=dict(enumerate(label_names)),
                                      label2id={n: i for i, n in enumerate(label_names)})


def build_model(model_dir: Path, config, random_init: bool):
    """A stock AutoModelForSequenceClassification; refuses a pretrained load that leaves encoder weights missing."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" notice is expected; checked below instead
    try:
        if random_init:
            model = AutoModelForSequenceClassification.from_config(config)
            if getattr(config, "relative_bias_init", None) == "local":  # a gpt_ds MPNet: its twin starts as it did
                local_bias_(model.base_model.encoder.relative_attention_bias)
            return model
        model, info = AutoModelForSequenceClassification.from_pretrained(str(model_dir), config=config,
                                                                         output_loading_info=True)
    except ValueError as e:
        raise GptDsError(f"{model_dir}: {str(e).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    head = ("classifier", "score", "pooler", "qa_outputs")
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(head)]
    if missing:
        raise GptDsError(f"{model_dir}: the pretrained weights do not cover the encoder (missing {missing[:3]}...); "
                         f"is it the right folder?")
    return model


def layerwise_groups(model: torch.nn.Module, lr: float, layer_decay: float, weight_decay: float) -> list[dict]:
    """ELECTRA's layer-wise decay: lr * layer_decay ** (distance from the head); no decay on bias / LayerNorm."""
    top = model.config.num_hidden_layers + 1
    return depth_groups(model, top - 1, weight_decay, lambda depth: lr * layer_decay ** (top - depth))


# ------------------------------------------------------------------------------------------------------ one seed


def predict(model, loader, accelerator) -> tuple[list[int], list[int]]:
    model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for batch in loader:
            y = batch.pop("labels")
            p = model(**batch).logits.argmax(-1)
            p, y = accelerator.gather_for_metrics((p, y))
            preds += p.tolist()
            labels += y.tolist()
    model.train()
    return labels, preds


def finetune_seed(seed: int, lr: float, epochs: float, a: argparse.Namespace, accelerator, model_dir: Path, config,
                  features: dict, collate, log) -> tuple[dict, dict]:
    """One fine-tuning run; returns its figures and the CPU state dict of its best validation point."""
    set_seed(seed)  # the same head init (and, with --random-init, the same encoder) on every process
    model = build_model(model_dir, config, a.random_init)
    optimizer = torch.optim.AdamW(layerwise_groups(model, lr, a.layer_decay, a.weight_decay), lr=lr,
                                  betas=(0.9, 0.999), eps=1e-6)
    order = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(features["train"], batch_size=a.batch_size, shuffle=True, collate_fn=collate,
                          generator=order, drop_last=False)
    eval_dls = {s: DataLoader(features[s], batch_size=2 * a.batch_size, collate_fn=collate)
                for s in ("validation", "test") if s in features}
    steps_per_epoch = -(-len(features["train"]) // a.batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    scheduler = make_scheduler(optimizer, int(a.warmup_ratio * total), total, 0.0)
    model, optimizer, train_dl, scheduler, *evals = accelerator.prepare(model, optimizer, train_dl, scheduler,
                                                                         *eval_dls.values())
    eval_dls = dict(zip(eval_dls, evals))
    eval_at = {max(1, round(total * k / (a.evals_per_epoch * epochs)))
               for k in range(1, int(a.evals_per_epoch * epochs) + 1)} | {total}
    best, best_state, step, t0, losses = None, None, 0, time.perf_counter(), []
    tag = search_tag(a, lr, epochs)
    model.train()
    while step < total:
        for batch in train_dl:
            loss = model(**batch).loss
            accelerator.backward(loss)
            if a.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), a.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            step += 1
            if step in eval_at:
                val = classification_metrics(*predict(model, eval_dls["validation"], accelerator), config.num_labels)
                better = best is None or val[a.select_metric] > best["validation"][a.select_metric]
                if better:
                    best = {"step": step, "epoch": round(step / steps_per_epoch, 2), "validation": val}
                    best_state = {k: v.detach().to("cpu", copy=True)
                                  for k, v in accelerator.unwrap_model(model).state_dict().items()}
                train_loss = torch.stack(losses).float().mean().item()
                losses = []
                log(f"{tag}seed {seed} step {step}/{total} "
                    f"epoch {step / steps_per_epoch:.2f} train loss {train_loss:.4f} "
                    f"validation " + " ".join(f"{m} {val[m]:.4f}" for m in METRICS) + (" (best)" if better else ""))
            if step >= total:
                break
    result = {"seed": seed, "steps": total, "best_step": best["step"], "best_epoch": best["epoch"],
              "validation": best["validation"], "train_seconds": round(time.perf_counter() - t0, 1)}
    if "test" in eval_dls:
        accelerator.unwrap_model(model).load_state_dict(best_state)
        result["test"] = classification_metrics(*predict(model, eval_dls["test"], accelerator), config.num_labels)
    accelerator.free_memory(model, optimizer, train_dl, scheduler, *eval_dls.values())
    return result, best_state


# ------------------------------------------------------------------------------------------------------- command


def search_tag(a: argparse.Namespace, lr: float, epochs: float) -> str:
    """What names one setting of the search in the log ('' when nothing is searched)."""
    return (f"lr {lr:g} " if len(a.lr) > 1 else "") + (f"epochs {epochs:g} " if len(a.epochs) > 1 else "")


def default_out(model_dir: Path, random_init: bool) -> Path:
    name = model_dir.resolve().name + ("-random-init" if random_init else "")
    return Path("runs") / "finetune" / name


def save_best(out: Path, model_dir: Path, config, state: dict, tokenizer, summary: dict) -> None:
    """The best seed's model as a stock HF folder (safetensors + tokenizer + results.json), written aside, renamed."""
    model = AutoModelForSequenceClassification.from_config(config)
    model.load_state_dict(state)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def finetune(a: argparse.Namespace) -> dict:
    check_recipe(a)
    model_dir = Path(a.model_dir)
    if not model_dir.is_dir():
        raise GptDsError(f"{model_dir}: no such model folder")
    tokenizer = load_tokenizer(model_dir)
    task: Task = load_task({"train": a.train, "validation": a.validation, "test": a.test}, a.text_field,
                           a.text_pair_field, a.label_field, validation_fraction=a.validation_fraction,
                           train_rows=a.train_rows)
    config = load_config(model_dir, task.label_names)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    # Without a GPU accelerate only forms a CPU process group when told to (else each process would train alone)
    accelerator = Accelerator(mixed_precision=a.mixed_precision, cpu=launched > 1 and not torch.cuda.is_available(),
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    n_proc = accelerator.num_processes
    if n_proc != launched:
        raise GptDsError(f"started as {launched} processes (WORLD_SIZE) but accelerate formed a group of {n_proc}; "
                         f"launch with `accelerate launch --multi_gpu --num_processes N` or torchrun")
    if a.batch_size % n_proc:
        raise GptDsError(f"--batch-size {a.batch_size} is split over {n_proc} processes: make it a multiple of "
                         f"{n_proc}")

    def log(msg: str) -> None:
        if accelerator.is_main_process:
            print(f"finetune: {msg}", file=sys.stderr, flush=True)

    positions = usable_positions(config)
    max_length = min(a.max_length or positions, positions)
    features = {s: encode(tokenizer, task.splits[s], task.label_ids(s), max_length)
                for s in SPLITS if s in task.splits}
    counts = {s: {"examples": len(sp.texts), "skipped": sp.skipped, "source": sp.source}
              for s, sp in task.splits.items()}
    for s, c in counts.items():
        if c["skipped"]:
            log(f"{c['source']}: skipped {c['skipped']} rows without text or label")
    log(f"{model_dir}{' (random init)' if a.random_init else ''}: {len(task.label_names)} labels "
        f"{task.label_names[:10]}, " + ", ".join(f"{s} {c['examples']}" for s, c in counts.items()) +
        f"; {n_proc} process(es) on {accelerator.device}, max length {max_length}")
    collate = DataCollatorWithPadding(tokenizer)
    searched = []  # per (rate, epochs): its seeds, medians and best seed's weights
    for lr, epochs in itertools.product(a.lr, a.epochs):
        tag = search_tag(a, lr, epochs)
        per_seed, best_state, best_val, best_seed = [], None, None, None
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            result, state = finetune_seed(seed, lr, epochs, a, accelerator, model_dir, config, features, collate, log)
            per_seed.append(result)
            score = result["validation"][a.select_metric]
            if best_val is None or score > best_val:
                best_val, best_seed = score, seed
                best_state = state if not a.no_save else None
            log(f"{tag}seed {seed} done: best validation {a.select_metric} {score:.4f} at step {result['best_step']}"
                + (f", test {a.select_metric} {result['test'][a.select_metric]:.4f}" if "test" in result else ""))
        searched.append({"lr": lr, "epochs": epochs, "seeds": per_seed, "state": best_state, "best_seed": best_seed,
                         "median": {s: median_over_seeds(per_seed, s) for s in ("validation", "test")}})
        leader = max(searched, key=lambda r: r["median"]["validation"][a.select_metric])  # the first on a tie
        for r in searched:  # only the leading setting's weights are kept: a grid of models would not fit in memory
            if r is not leader:
                r["state"] = None
        if tag:
            log(f"{tag}median validation {a.select_metric} {searched[-1]['median']['validation'][a.select_metric]:.4f}")
    chosen = leader  # chosen on validation only; test is read at that setting alone
    per_seed, best_state, best_seed = chosen["seeds"], chosen["state"], chosen["best_seed"]
    recipe = {k: getattr(a, k) for k in ("layer_decay", "weight_decay", "warmup_ratio", "batch_size",
                                         "max_grad_norm", "evals_per_epoch", "select_metric", "train_rows")}
    summary = {"model": str(model_dir), "random_init": a.random_init, "labels": task.label_names, "data": counts,
               "recipe": dict(recipe, lr=chosen["lr"], epochs=chosen["epochs"], max_length=max_length,
                              processes=n_proc),
               "seeds": per_seed, "median": chosen["median"]}
    if len(searched) > 1:
        summary["search"] = [{"lr": r["lr"], "epochs": r["epochs"], "median": r["median"]} for r in searched]
        log(f"{search_tag(a, chosen['lr'], chosen['epochs'])}chosen on validation (of {len(searched)} settings: lr "
            f"{', '.join(f'{x:g}' for x in a.lr)} x epochs {', '.join(f'{x:g}' for x in a.epochs)})")
    if not a.no_save:
        out = Path(a.out) if a.out else default_out(model_dir, a.random_init)
        summary["out"] = str(out)
        summary["best_seed"] = best_seed
        if accelerator.is_main_process:
            out.parent.mkdir(parents=True, exist_ok=True)
            save_best(out, model_dir, config, best_state, tokenizer, summary)
        accelerator.wait_for_everyone()
    return summary if accelerator.is_main_process else {}


def run(args: argparse.Namespace) -> int:
    hf_logging.disable_progress_bar()  # a job log gets our lines, not redrawn bars
    summary = finetune(args)
    if summary:
        med = summary["median"]
        for split in ("validation", "test"):
            if med.get(split):
                print(f"finetune: median over {len(summary['seeds'])} seeds, {split}: " +
                      " ".join(f"{m} {med[split][m]:.4f}" for m in METRICS), file=sys.stderr)
        print(json.dumps(summary), flush=True)
    return 0
