"""`gpt-ds export RUN_DIR --out DIR`: a checkpoint -> stock Hugging Face folders (ELECTRA or MPNet; safetensors +
tokenizer).

Runs offline on one CPU process: every rank's ZeRO partitions are merged from the files (DeepSpeed's zero_to_fp32 for
stages 1-3, the module file for stage 0), the tied output embedding is re-tied, and the GDES delta is merged into the
discriminator's tables (E_G + E_delta), so `AutoModelForPreTraining` / `AutoModelForMaskedLM` / `pipeline` load the
result with no gpt_ds code. Written to DIR.tmp, then renamed. MPNet (model.arch=mpnet) has no pretraining-head class
in transformers: its discriminator folder is an MPNetModel (what AutoModel / AutoModelForSequenceClassification load)
with the RTD head beside it in rtd_head.safetensors, which `load_discriminator` puts back.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer,
                          ElectraForMaskedLM, ElectraForPreTraining, MPNetForMaskedLM)
from transformers.utils import logging as hf_logging

from gpt_ds import __version__, checkpoint
from gpt_ds.checkpoint import safe_load
from gpt_ds.checkpoint.run_files import find_tokenizer
from gpt_ds.config import Config, config_from_dict
from gpt_ds.errors import GptDsError
from gpt_ds.export_card import model_card
from gpt_ds.flops import run_flops
from gpt_ds.model.discriminator import MPNetForReplacedTokenDetection
from gpt_ds.model.generator import mpnet_positions
from gpt_ds.model.hf_config import MPNET_FIRST_POSITION, discriminator_config, generator_config

TIED = {"generator_lm_head.weight", "mlm.generator_lm_head.weight",  # ELECTRA; MPNet's below (tied output only)
        "lm_head.decoder.weight", "lm_head.decoder.bias", "mlm.lm_head.decoder.weight", "mlm.lm_head.decoder.bias"}
RTD_HEAD_FILE = "rtd_head.safetensors"  # an MPNet discriminator's replaced-token-detection head


def load_discriminator(folder: str | Path):
    """An exported discriminator with its RTD head, in eval mode; `model(ids, attention_mask=...).logits` is (B, L)
    for either arch. Safetensors only: no pickle, no code from the folder."""
    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    if config.model_type != "mpnet":
        return AutoModelForPreTraining.from_pretrained(folder).eval()
    head = folder / RTD_HEAD_FILE
    if not head.is_file():
        raise GptDsError(f"{head}: missing; an MPNet discriminator exported by gpt_ds keeps its replaced-token-"
                         f"detection head there (re-export the run with `gpt-ds export`)")
    model = MPNetForReplacedTokenDetection(config)
    model.mpnet = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    model.discriminator_predictions.load_state_dict(load_file(head))
    return model.eval()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the run folder (holds checkpoints/) or a checkpoints/step_XXXXXXX folder")
    p.add_argument("--out", required=True, help="output folder; gets discriminator/ and generator/")
    p.add_argument("--step", type=int, default=None, help="export this step (default: the newest complete one)")
    p.add_argument("--verify", action="store_true", help="reload the export and compare with gpt_ds's outputs")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer folder to ship (default: the run's own copy, RUN/tokenizer, else the recorded path)")


def find_step_dir(run_dir: Path, step: int | None) -> Path:
    if (run_dir / checkpoint.STATE_FILE).is_file():
        return run_dir
    ckpt = run_dir / "checkpoints"
    if step is not None:
        p = ckpt / checkpoint.step_dir_name(step)
        if not (p / checkpoint.STATE_FILE).is_file():
            have = [s for s, _ in checkpoint.complete_steps(ckpt)]
            raise GptDsError(f"{p}: no complete checkpoint for step {step}; complete steps: {have}")
        return p
    found = checkpoint.find_resume(ckpt, "auto")
    if found is None:
        raise GptDsError(f"{run_dir}: no complete checkpoint under {ckpt}; train first or pass the run folder")
    return found


def engine_state_dict(step_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 weights of one engine, merged over every rank's partition."""
    folder = step_dir / tag
    if not folder.is_dir():
        raise GptDsError(f"{folder}: missing; the checkpoint is incomplete")
    if glob.glob(str(folder / "*optim_states.pt")) and glob.glob(str(folder / "zero_pp_rank_*")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        with safe_load.weights_only_loads():  # zero_to_fp32 would unpickle anything
            sd = get_fp32_state_dict_from_zero_checkpoint(str(step_dir), tag=tag)
    else:
        files = sorted(folder.glob("mp_rank_*_model_states.pt"))
        if not files:
            raise GptDsError(f"{folder}: no DeepSpeed model states found")
        sd = safe_load.load(files[0], map_location="cpu")["module"]
    return {k: v.float() for k, v in sd.items()}


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _load_into(model: torch.nn.Module, sd: dict, what: str) -> None:
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in TIED]
    if missing or unexpected:
        raise GptDsError(f"{what}: checkpoint does not fit the config (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]})")


def load_engine_weights(cfg: Config, step_dir: Path) -> dict[str, dict]:
    out = {"generator": engine_state_dict(step_dir, "generator")}
    if cfg.objective.kind == "electra":
        out["discriminator"] = engine_state_dict(step_dir, "discriminator")
    return out


def build_hf_models(cfg: Config, state: dict, weights: dict[str, dict]):
    """Stock transformers models; GDES merged."""
    vocab, pad = state["vocab_size"], state["pad_id"]
    gen_sd = _strip(weights["generator"], "mlm.")
    kind = cfg.objective.kind
    g_arch, d_arch = cfg.model.tower_arch("generator", kind), cfg.model.tower_arch("discriminator", kind)
    mpnet = g_arch == "mpnet"
    gen = (MPNetForMaskedLM if mpnet else ElectraForMaskedLM)(generator_config(cfg, vocab, pad))
    _load_into(gen, gen_sd, "generator")
    gen.tie_weights()
    if mpnet and gen.lm_head.bias is not gen.lm_head.decoder.bias:
        # untied, MPNet's head holds a second output bias its forward never reads (decoder.bias is the trained one);
        # the folder carries the trained values under both names, so a loader that ties them reads no zeros
        with torch.no_grad():
            gen.lm_head.bias.copy_(gen.lm_head.decoder.bias)
    disc = None
    if cfg.objective.kind == "electra":
        disc_sd = _strip(weights["discriminator"], "pt.")
        if cfg.objective.embedding_sharing == "gdes":
            _merge_gdes(disc_sd, gen_sd, d_arch, g_arch)
        disc = (MPNetForReplacedTokenDetection if d_arch == "mpnet" else ElectraForPreTraining)(
            discriminator_config(cfg, vocab, pad))
        _load_into(disc, disc_sd, "discriminator")
    return gen.eval(), disc.eval() if disc is not None else None


def _merge_gdes(disc_sd: dict, gen_sd: dict, d_arch: str, g_arch: str) -> None:
    """E_D = E_G + E_delta for the word and position tables. Towers of two archs (model.generator_arch) number their
    position rows differently (MPNet from MPNET_FIRST_POSITION): each discriminator row gets the generator row the
    trainer added to it, the same position of the text."""
    d, g = f"{d_arch}.embeddings.", f"{g_arch}.embeddings."
    disc_sd[d + "word_embeddings.weight"] = disc_sd[d + "word_embeddings.weight"] + gen_sd[g + "word_embeddings.weight"]
    first = {"mpnet": MPNET_FIRST_POSITION, "electra": 0}
    delta, base = disc_sd[d + "position_embeddings.weight"], gen_sd[g + "position_embeddings.weight"]
    shift = first[g_arch] - first[d_arch]  # generator row = discriminator row + shift
    lo, hi = max(0, -shift), min(delta.shape[0], base.shape[0] - shift)
    merged = delta.clone()
    merged[lo:hi] += base[lo + shift:hi + shift]
    disc_sd[d + "position_embeddings.weight"] = merged


def framework_towers(cfg: Config, state: dict, weights: dict[str, dict]):
    """gpt_ds's own Generator / Discriminator modules (delta tables unmerged), as the trainer ran them."""
    from gpt_ds.train.engines import build_models
    gen, disc = build_models(cfg, state["vocab_size"], state["pad_id"], seed=0)
    _load_into(gen, {k: v for k, v in weights["generator"].items()}, "generator")
    gen.mlm.tie_weights()
    if disc is not None:
        _load_into(disc, weights["discriminator"], "discriminator")
    return gen.eval(), disc.eval() if disc is not None else None


def _readable(root: Path) -> None:
    """safetensors writes its files 0600; an export is handed to other people: rw-r--r-- (within the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in root.rglob("*"):
        os.chmod(path, (0o755 if path.is_dir() else 0o644) & ~umask)


def provenance(cfg: Config, state: dict) -> dict:
    """Where the weights come from, for gpt_ds_export.json: versions, the data (each store's shard checksums, hashed
    into one fingerprint, when the store is reachable from here), the tokenizer's fingerprint, tokens and FLOPs."""
    stores = {}
    for source in cfg.data.sources:
        manifest = Path(source.path) / "manifest.json"
        try:
            shards = json.loads(manifest.read_text())["shards"]
            stores[str(source.path)] = hashlib.sha256("".join(x["sha256"] for x in shards).encode()).hexdigest()[:16]
        except (OSError, ValueError, KeyError, TypeError):
            stores[str(source.path)] = None  # raw text, or not reachable from where the export runs
    step = state["step"]
    return {"gpt_ds_version_trained": state.get("gpt_ds_version"), "gpt_ds_version_exported": __version__,
            "tokenizer_fingerprint": state.get("tokenizer_fingerprint"), "data_fingerprints": stores,
            "tokens_seen": step * cfg.train.global_batch * cfg.data.seq_len,
            "train_flops": run_flops(cfg, step, state.get("vocab_size")), "config": cfg.to_dict()}


def export(run_dir: str | Path, out: str | Path, step: int | None = None, verify: bool = False,
           tokenizer: str | Path | None = None) -> dict:
    step_dir = find_step_dir(Path(run_dir), step)
    state = checkpoint.read_state(step_dir)
    cfg = config_from_dict(state["config"])
    weights = load_engine_weights(cfg, step_dir)
    gen, disc = build_hf_models(cfg, state, weights)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tok = None
    if state.get("tokenizer_dir") or tokenizer:
        where = Path(tokenizer) if tokenizer else find_tokenizer(step_dir, state.get("tokenizer_dir"))
        if where is None or not (where / "tokenizer_config.json").is_file():
            raise GptDsError(f"{step_dir}: the run was trained with the tokenizer '{state.get('tokenizer_dir')}', "
                             f"and neither that folder nor the run's own copy ({step_dir.parent.parent / 'tokenizer'}) "
                             f"{'' if where is None else f'nor {where} '}holds one; pass --tokenizer DIR")
        tok = AutoTokenizer.from_pretrained(str(where))
        # truncation=True (pipelines, finetune) must stop at the model's positions, not the tokenizer's 512 default
        tok.model_max_length = cfg.model.max_position_embeddings
    # the MLM baseline's encoder is the one to fine-tune: it goes out as the generator (ElectraForMaskedLM)
    for name, model in (("generator", gen), ("discriminator", disc)):
        if model is None:
            continue
        if isinstance(model, MPNetForReplacedTokenDetection):  # the encoder as a stock MPNetModel, the head beside
            model.mpnet.save_pretrained(tmp / name, safe_serialization=True)
            save_file({k: v.contiguous() for k, v in model.discriminator_predictions.state_dict().items()},
                      str(tmp / name / RTD_HEAD_FILE))
        else:
            model.save_pretrained(tmp / name, safe_serialization=True)
        if tok is not None:
            tok.save_pretrained(tmp / name)
        (tmp / name / "README.md").write_text(model_card(name, cfg, state, step_dir.parent.parent))
    info = {"step": state["step"], "source": str(step_dir), "objective": cfg.objective.kind,
            "embedding_sharing": cfg.objective.embedding_sharing, "temperature": cfg.objective.temperature,
            "tokenizer": bool(tok), **provenance(cfg, state)}
    (tmp / "gpt_ds_export.json").write_text(json.dumps(info, indent=1))
    _readable(tmp)
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    if verify:
        info["verify_max_abs_diff"] = verify_export(out, cfg, state, weights)
    return info


def verify_export(out: Path, cfg: Config, state: dict, weights: dict[str, dict]) -> float:
    """Reload with plain transformers and compare with gpt_ds's own towers on the same checkpoint weights."""

    gen_ours, disc_ours = framework_towers(cfg, state, weights)
    vocab, length = state["vocab_size"], min(cfg.data.seq_len, 64)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (3, length), generator=g)
    att = torch.ones_like(ids)
    att[1, length // 2:] = 0
    ids[att == 0] = state["pad_id"]
    tt = torch.zeros_like(ids)
    # ids from 5 up: no [UNK] (id 1), where MPNet's own position rule would differ from the positions gpt_ds gives
    pos = mpnet_positions(ids) if gen_ours.mpnet else torch.arange(length)[None, :]
    ours_kw = {"position_ids": pos} if gen_ours.mpnet else {"token_type_ids": tt}
    theirs_kw = {} if gen_ours.mpnet else {"token_type_ids": tt}
    worst = 0.0
    with torch.no_grad():
        hf_gen = AutoModelForMaskedLM.from_pretrained(out / "generator").eval()
        ours = gen_ours.mlm(ids, attention_mask=att, **ours_kw).logits
        theirs = hf_gen(ids, attention_mask=att, **theirs_kw).logits
        worst = max(worst, (ours - theirs)[att.bool()].abs().max().item())
        if disc_ours is not None:
            hf_disc = load_discriminator(out / "discriminator")
            base = None
            if disc_ours.gdes:
                emb = gen_ours.backbone.embeddings
                base = emb.word_embeddings(ids) + emb.position_embeddings(pos)
            ours = disc_ours.pt.discriminator_predictions(disc_ours.encode(ids, att, tt, base))
            theirs = hf_disc(ids, attention_mask=att, **({} if disc_ours.mpnet else {"token_type_ids": tt})).logits
            worst = max(worst, (ours - theirs)[att.bool()].abs().max().item())
    if worst > 1e-5:
        raise GptDsError(f"export {out}: reloaded models differ from gpt_ds's by {worst:.3g} (> 1e-5)")
    return worst


def run(args: argparse.Namespace) -> int:
    hf_logging.disable_progress_bar()
    info = export(args.run_dir, args.out, args.step, args.verify, args.tokenizer)
    print(json.dumps(info))
    return 0
