"""Why does (or doesn't) a pretrained export help fine-tuning? Measurements on one export, for docs/results.md.

For an export folder (gpt-ds export --out DIR: DIR/discriminator and DIR/generator):
- rtd (not for an MLM export): held-out news text corrupted by the exported generator, scored by the exported
  discriminator, against a token-identity-only baseline (gpt_ds.evaluate.rtd_report);
- geometry: the word-embedding tables' first-principal-direction share (random init: ~1%);
- order: whether the exported generator reads word order (gpt_ds.evaluate.order_sensitivity);
- layers: per layer of the discriminator (of an MLM export: its masked LM), the first-principal-direction share and
  effective dimensions of its outputs on the task's training sentences, beside a random-init twin
  (gpt_ds.evaluate.hidden_geometry);
- ablation (--ablate): fine-tune (`gpt-ds finetune`, --seeds seeds, plus --finetune-args) the encoder (of an MLM
  export: its masked LM's) with only part of the pretrained weights kept and the rest re-drawn from the random init: all, embeddings only, encoder only, all but the
  top one or two layers, none (= --random-init); --parts picks some. Which part helps or hurts shows in the test
  accuracy of each. Two more parts split a GDES export's embeddings (the discriminator's word and position tables are
  the generator's plus a trained delta): generator_table (embeddings only, those tables set to the generator's) and
  delta_table (set to the delta alone).

    .venv/bin/python bench/diagnose_pretraining.py runs/demo/export --ablate --task question-type
    .venv/bin/python bench/diagnose_pretraining.py EXPORT --ablate --parts all,embeddings,all_but_top2 \
        --finetune-args="--lr 1e-3,3e-3 --train-rows 500 --epochs 10"     # docs/results.md §8.4
    (--parts generator_table,delta_table: the split of the embeddings' gain in §8.4)
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARTS = {"all": lambda k: True, "embeddings": lambda k: ".embeddings" in k,
         "word_embeddings": lambda k: "word_embeddings" in k,
         "all_but_positions": lambda k: "position_embeddings" not in k,
         "encoder": lambda k: ".embeddings" not in k or "embeddings_project" in k, "none": lambda k: False}


def news_texts(work: Path) -> tuple[list[str], list[str]]:
    """Held-out articles (the demo's last file) and training articles (first file) to fit the identity baseline."""
    from demo.corpora import news_articles
    files = news_articles(work / "corpus")
    docs = [[d for d in f.read_text().split("\n\n") if d.strip()] for f in (files[-1], files[0])]
    return docs[0][:40], docs[1][:200]


TABLES = ("word_embeddings", "position_embeddings")
SPLIT = {"generator_table": "generator", "delta_table": "delta"}  # parts that keep the embeddings, tables split


def partial_model(export: Path, keep, out: Path, tables: str = "", generator: Path | None = None) -> Path:
    """The encoder (a discriminator, or an MLM export's masked LM) with the parameters `keep` selects pretrained and
    the others from a seeded random init, as an ElectraForPreTraining folder (a fine-tune drops its head).
    tables="generator" / "delta": the word and position tables become the generator's / the merged minus it."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, ElectraForMaskedLM, ElectraForPreTraining
    pre = ElectraForPreTraining.from_pretrained(export)
    torch.manual_seed(0)
    fresh = ElectraForPreTraining(AutoConfig.from_pretrained(export)).state_dict()
    mixed = {k: v if keep(k) else fresh[k] for k, v in pre.state_dict().items()}
    if tables:
        gen = ElectraForMaskedLM.from_pretrained(generator).state_dict()
        for t in TABLES:
            k = f"electra.embeddings.{t}.weight"
            if gen[k].shape != mixed[k].shape:
                raise SystemExit(f"{generator}: its {t} is {tuple(gen[k].shape)}, the discriminator's "
                                 f"{tuple(mixed[k].shape)}: the table split needs a GDES export (shared widths)")
            mixed[k] = gen[k].clone() if tables == "generator" else mixed[k] - gen[k]
    pre.load_state_dict(mixed)
    pre.save_pretrained(out)
    AutoTokenizer.from_pretrained(export).save_pretrained(out)
    return out


def finetune(model: Path, task: dict, seeds: int, extra: list[str] = ()) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "gpt_ds.cli", "finetune", str(model), "--train", str(task["train"]),
                        "--validation", str(task["validation"]), "--test", str(task["test"]), "--seeds", str(seeds),
                        "--no-save", *extra], env=env, cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", help="an export folder (holds discriminator/ and generator/)")
    ap.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the run's)")
    ap.add_argument("--ablate", action="store_true")
    ap.add_argument("--task", default="question-type")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--parts", default="", help="comma-separated parts to ablate (default: all of them)")
    ap.add_argument("--finetune-args", default="", help="more `gpt-ds finetune` options, one quoted string")
    ap.add_argument("--work", default="runs/diagnose")
    a = ap.parse_args()
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from demo.corpora import labeled_task
    from gpt_ds.evaluate import embedding_geometry, hidden_geometry, order_sensitivity, rtd_report
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    export, work = Path(a.export), Path(a.work)
    names = [*PARTS, "all_but_top_layer", "all_but_top2", *SPLIT]
    unknown = [p for p in a.parts.split(",") if p and p not in names]
    if unknown:  # before the minutes of diagnostics, not after
        raise SystemExit(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(names)}")
    if not (export / "gpt_ds_export.json").is_file():
        raise SystemExit(f"{export}: not a `gpt-ds export --out` folder (no gpt_ds_export.json)")
    info = json.loads((export / "gpt_ds_export.json").read_text())
    # an MLM run (objective.kind=mlm) exports its masked LM alone: that is the encoder a downstream team gets
    mlm = not (export / "discriminator").is_dir()
    if mlm and any(p in SPLIT for p in a.parts.split(",")):
        raise SystemExit(f"--parts: {', '.join(SPLIT)} split a GDES discriminator's tables; {export} is an MLM export")
    encoder = export / ("generator" if mlm else "discriminator")
    temperature = a.temperature or info.get("temperature", 1.0)
    held, fit = news_texts(work)
    out = {"export": str(export), "encoder": encoder.name, "temperature": temperature,
           "geometry": {"generator": embedding_geometry(AutoModelForMaskedLM.from_pretrained(export / "generator"))},
           "order": order_sensitivity(export / "generator", held)}
    if not mlm:
        out["rtd"] = rtd_report(export, held, fit, temperature)
        out["geometry"]["discriminator"] = embedding_geometry(AutoModelForPreTraining.from_pretrained(encoder))
    task = labeled_task(a.task, work / "tasks")
    sentences = [json.loads(line)["text"] for line in Path(task["train"]).read_text().splitlines()[:300]]
    torch.manual_seed(0)
    out["layers"] = {"task": a.task, "sentences": len(sentences),
                     "export": hidden_geometry(AutoModel.from_pretrained(encoder),
                                               AutoTokenizer.from_pretrained(encoder), sentences),
                     "random_init": hidden_geometry(AutoModel.from_config(AutoConfig.from_pretrained(encoder)),
                                                    AutoTokenizer.from_pretrained(encoder), sentences)}
    print(json.dumps(out), file=sys.stderr)
    if a.ablate:
        out["ablation"] = {"task": a.task, "seeds": a.seeds}
        n = AutoConfig.from_pretrained(encoder).num_hidden_layers  # the discriminator, or an MLM's masked LM
        top, below = f"layer.{n - 1}.", f"layer.{n - 2}."
        parts = dict(PARTS, all_but_top_layer=lambda k: top not in k,
                     all_but_top2=lambda k: top not in k and below not in k,
                     **{name: PARTS["embeddings"] for name in SPLIT})
        chosen = a.parts.split(",") if a.parts else list(parts)
        out["ablation"]["finetune_args"] = a.finetune_args
        with tempfile.TemporaryDirectory() as tmp:
            for part in chosen:
                model = partial_model(encoder, parts[part], Path(tmp) / part, SPLIT.get(part, ""),
                                      export / "generator")
                r = finetune(model, task, a.seeds, shlex.split(a.finetune_args))
                out["ablation"][f"{part}_pretrained"] = 100 * r["median"]["test"]["accuracy"]
                print(f"{part} pretrained: test accuracy {out['ablation'][f'{part}_pretrained']:.1f}",
                      file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
