"""One typed config tree for a run: YAML file (or preset name) + dotted CLI overrides.

Every key is declared here; an unknown key or a value of the wrong type is refused with the dotted key named and the
closest valid key suggested, before any process group or model exists.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gpt_ds.errors import GptDsError

REPO_ROOT = Path(__file__).resolve().parent.parent
# The presets: configs/ and ds_configs/ at the top of a source tree; in an installed wheel, the copies setup.py puts
# into gpt_ds/_data/ (one set of files in git, found the same way from either).
_PACKAGED = Path(__file__).resolve().parent / "_data"
DATA_ROOT = _PACKAGED if _PACKAGED.is_dir() else REPO_ROOT
PRESET_DIR = DATA_ROOT / "configs"
DS_CONFIG_DIR = DATA_ROOT / "ds_configs"


class ConfigError(GptDsError, ValueError):
    """A problem with the user's configuration; the message names the key and the fix."""


@dataclass
class RunConfig:
    name: str = "run"
    dir: str = ""  # default: runs/<name>
    seed: int = 1234


@dataclass
class ModelConfig:
    # the stock transformers backbone of both towers (an ELECTRA run's generator may have another: generator_arch):
    # electra (learned absolute positions; embedding projection), or mpnet (also a learned bias per relative
    # distance, which `relative_bias_init: local` starts favouring near positions: the way off the word-frequency
    # plateau at small budgets, docs/results.md §8.12-8.13). mpnet has no embedding projection (embedding_size is
    # unused) and no token types
    arch: Literal["electra", "mpnet"] = "electra"
    # an ELECTRA run's generator on another backbone than the discriminator ("": model.arch's). mpnet here gives an
    # ELECTRA discriminator a generator whose relative-position bias starts local: a masked LM that leaves word
    # frequencies at small budgets (docs/results.md §8.26). Under GDES the generator's width must then be the
    # discriminator's embedding width (the word table is shared)
    generator_arch: Literal["", "electra", "mpnet"] = ""
    # mpnet: the relative-position bias starts at -slope * distance (slopes 1 and 1/4 by head): "local"; or as
    # transformers initialises it (normal): "normal"
    relative_bias_init: Literal["local", "normal"] = "local"
    vocab_size: int = 0  # 0: taken from the tokenizer
    hidden_size: int = 256
    num_layers: int = 12
    num_heads: int = 4
    intermediate_size: int = 1024
    embedding_size: int = 128
    max_position_embeddings: int = 512
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    # generator: width as a fraction of the discriminator's (ELECTRA: 1/4); depth 0 = same as the discriminator
    generator_hidden_ratio: float = 0.25
    generator_layers: int = 0
    # initial position table: "sinusoidal" (scaled sin/cos; learned afterwards, still a stock ELECTRA) or "normal"
    position_init: Literal["sinusoidal", "normal"] = "normal"
    # std of the initial weights (ElectraConfig.initializer_range). Inputs to every projection are LayerNorm'd (unit
    # variance), so attention logits start with std ~ range^2 * hidden: 0.02 suits BERT-base's 768; a small encoder
    # needs more, or its attention stays uniform (a bag of words) for thousands of steps (docs/results.md)
    initializer_range: float = 0.02
    # the generator's (and the MLM baseline's) output layer reuses the input word embeddings (ELECTRA, BERT); false:
    # a separate output matrix, so the input table (what GDES hands the discriminator) gets no softmax gradient
    tie_output_embeddings: bool = True
    # output biases start at the data's priors (log unigram frequencies; log-odds of mask_prob), gpt_ds/model/priors.py
    init_output_priors: bool = True
    # the fused heads: auto (Triton on a GPU, chunked PyTorch elsewhere), triton, torch, or reference (full logits)
    kernels: Literal["auto", "triton", "torch", "reference"] = "auto"
    # the encoder layers: fast (gpt_ds's C++ CPU paths where they apply; a GPU keeps torch's own), stock (plain
    # transformers), or auto = stock with kernels=reference (the all-stock twin the tests compare with), else fast
    encoder_kernels: Literal["auto", "fast", "stock"] = "auto"

    def generator_width(self) -> int:
        """An ELECTRA generator's width: model.generator_hidden_ratio of the discriminator's (at least 16)."""
        return max(16, int(round(self.hidden_size * self.generator_hidden_ratio)))

    def tower_arch(self, tower: str, kind: str = "electra") -> str:
        """The backbone a tower is built on: model.arch, or model.generator_arch for an ELECTRA run's generator. The
        MLM baseline's one tower (the engines call it the generator) is model.arch's."""
        if tower == "generator" and kind == "electra" and self.generator_arch:
            return self.generator_arch
        return self.arch

    def table_width(self, tower: str, kind: str = "electra") -> int:
        """The width of a tower's word table: ELECTRA reads model.embedding_size and projects it to the tower's width;
        MPNet has no projection, so its table is as wide as the tower. GDES needs both towers' widths equal."""
        if self.tower_arch(tower, kind) == "electra":
            return self.embedding_size
        return self.generator_width() if tower == "generator" and kind == "electra" else self.hidden_size


@dataclass
class ObjectiveConfig:
    kind: Literal["electra", "mlm"] = "electra"
    mask_prob: float = 0.15
    # of the selected positions: share replaced by [MASK], kept as is, replaced by a random token (ELECTRA: .85/.15/0)
    mask_token_frac: float = 0.85
    keep_frac: float = 0.15
    random_frac: float = 0.0
    temperature: float = 1.0
    disallow_correct: bool = False
    gen_weight: float = 1.0
    disc_weight: float = 50.0
    embedding_sharing: Literal["gdes", "none"] = "gdes"
    # the discriminator joins at this step (0: from the start). A generator-first schedule: replaced-token detection
    # then never learns from a generator still on its bag-of-words plateau (docs/results.md §4b)
    disc_start_step: int = 0
    # replaced-token detection scores [CLS], [SEP] and the other special tokens too (ELECTRA's own code does); they
    # are never replaced, so the loss there teaches only "position 0 is original"
    rtd_on_specials: bool = True
    # a corrective masked-LM loss on the discriminator too (predict the original token at the masked positions from the
    # corrupted text, COCO-LM's "corrective LM"): a many-way target beside the one-way RTD logit. 0 = pure ELECTRA
    disc_mlm_weight: float = 0.0
    # COCO-LM's sequence contrastive learning on the discriminator's [CLS]: a share `scl_rows` of each micro-batch's
    # rows also goes through the discriminator uncorrupted, and each such row's [CLS] must pick out its corrupted twin
    # among the micro-batch's rows (InfoNCE on cosine / scl_temperature). Meant to keep sentence-level information in
    # the vector a classifier reads, which RTD squeezes out at small budgets; at `tiny`'s budgets it did not
    # (docs/results.md §8.4), so no preset sets it. 0 = off
    disc_scl_weight: float = 0.0
    scl_rows: float = 0.25
    scl_temperature: float = 0.1


@dataclass
class SourceConfig:
    path: str = ""
    weight: float = 1.0


@dataclass
class DataConfig:
    # text files / folders, tokenized and packed at start (small corpora) -- or token stores built by `gpt-ds prepare`
    sources: list[SourceConfig] = field(default_factory=list)
    tokenizer: str = ""  # a Hugging Face tokenizer directory (e.g. from `gpt-ds tokenizer train`)
    seq_len: int = 128
    synthetic: bool = False  # random token rows (tests, benchmarks); needs model.vocab_size
    synthetic_samples: int = 4096
    prefetch: int = 2  # steps prepared ahead by the loader's background thread
    # rows as two segments [CLS] A [SEP] B [SEP] (token_type_ids 0 / 1) instead of [CLS] doc [SEP] doc [SEP] ...
    two_segments: bool = False


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-6
    warmup_steps: int = 10000
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    # < 1: layer i of the encoder handed downstream (the discriminator's; the MLM's own) learns at
    # lr * decay ** (i + 1), its embeddings and heads at lr (docs/results.md §8.5)
    encoder_layer_lr_decay: float = 1.0
    # > 0: an ELECTRA run's generator learns at this peak rate, the discriminator at lr (0: both at lr). The small
    # generator is the tower a short run leaves undertrained: its fill-mask guesses (docs/results.md §8.25)
    generator_lr: float = 0.0

    def peak_lr(self, electra_generator: bool) -> float:
        """The one place that says which tower learns at generator_lr (validation refuses it outside ELECTRA)."""
        return self.generator_lr if electra_generator and self.generator_lr > 0 else self.lr


@dataclass
class TrainConfig:
    global_batch: int = 128
    micro_batch: int = 0  # per rank; 0: global_batch / (grad_accum * data-parallel ranks)
    grad_accum: int = 1
    max_steps: int = 1_000_000
    stop_at: int = 0  # stop (with a checkpoint) once this step is done, keeping the max_steps schedule; 0: never
    # recompute each encoder layer in the backward instead of keeping its activations (gpt-ds estimate says when)
    activation_checkpointing: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # a rank stuck this long in one step or save says so, and gives up (exit 3) after the timeout: a stopped or lost
    # peer would otherwise hold every rank in a collective; 0 turns either off (gpt_ds/watchdog.py)
    watchdog_warn_s: float = 60.0
    watchdog_timeout_s: float = 1800.0


@dataclass
class DeepSpeedConfig:
    generator: str = "ds_configs/zero3_fp32.json"
    discriminator: str = "ds_configs/zero3_fp32.json"
    overrides: dict = field(default_factory=dict)  # merged into both engines' ds_configs
    generator_overrides: dict = field(default_factory=dict)
    discriminator_overrides: dict = field(default_factory=dict)


@dataclass
class CheckpointConfig:
    every: int = 1000
    keep_last: int = 3
    resume: str = "auto"  # auto | none | a step folder


@dataclass
class LoggingConfig:
    every: int = 10
    tensorboard: bool = True
    progress_bar: bool = True
    peak_tflops: float = 0.0  # per device, for MFU in the logs; 0: measure a matmul's rate at start
    # Weights & Biases beside metrics.jsonl and TensorBoard (needs `pip install wandb`); offline: no network, the run
    # is written under RUN_DIR/wandb for `wandb sync` later
    wandb: bool = False
    wandb_project: str = "gpt_ds"
    wandb_mode: Literal["offline", "online"] = "offline"


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir or os.path.join("runs", self.run.name))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------- building from dicts


def _suggest(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"config key '{where}' = {value!r} is not allowed; choose one of {list(allowed)}"
                              f"{_suggest(str(value), [str(a) for a in allowed])}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, where + ".")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{where}' must be a list, got {value!r}")
        if dataclasses.is_dataclass(item_tp):
            out = []
            for i, v in enumerate(value):
                if isinstance(v, str) and item_tp is SourceConfig:
                    v = {"path": v}
                out.append(_coerce(v, item_tp, f"{where}[{i}]"))
            return out
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{where}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{where}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{where}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{where}' must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, raw: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(f"unknown config key '{prefix}{key}'{_suggest(key, names)}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    cls: Any = Config
    node = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else None
        if hints is not None and part not in hints:
            prefix = ".".join(parts[:i])
            full = [f"{prefix}.{n}" if prefix else n for n in hints]
            raise ConfigError(f"unknown config key '{dotted}' in override{_suggest(dotted, full)}")
        if i == len(parts) - 1:
            node[part] = value
            return
        cls = hints[part] if hints is not None else None
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{'.'.join(parts[:i + 1])}' is not a mapping")


def resolve_config_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    presets = sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"config '{name_or_path}' is neither a file nor a preset; presets: {presets}"
                      f"{_suggest(name_or_path, presets)}")


def parse_overrides(overrides: typing.Sequence[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. optim.lr=3e-4)")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        out.append((key.strip(), value))
    return out


def load_config(name_or_path: str | None = None, overrides: typing.Sequence[str] = (), *,
                raw: dict | None = None) -> Config:
    """Preset name or YAML path, then `key=value` overrides; validated."""
    data: dict = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        base = data.pop("base", None)  # a preset may extend another: `base: tiny`
        if base is not None:
            data = _merge(load_config(base).to_dict(), data)
    if raw:
        data = _merge(data, raw)
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value)
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def config_from_dict(d: dict) -> Config:
    cfg = _build(Config, d)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks that need no process group; batch arithmetic against the world size is in batch_layout()."""
    o, m, t = cfg.objective, cfg.model, cfg.train
    problems = []
    if not 0.0 < o.mask_prob < 1.0:
        problems.append(f"objective.mask_prob = {o.mask_prob} must be in (0, 1)")
    split = o.mask_token_frac + o.keep_frac + o.random_frac
    if abs(split - 1.0) > 1e-6 or min(o.mask_token_frac, o.keep_frac, o.random_frac) < 0:
        problems.append(f"objective.mask_token_frac + keep_frac + random_frac = {split:g}; they must be >= 0 and sum to 1")
    if not 0 < m.initializer_range < 1:
        problems.append(f"model.initializer_range = {m.initializer_range} must be in (0, 1)")
    if o.temperature <= 0:
        problems.append(f"objective.temperature = {o.temperature} must be > 0")
    if not (math.isfinite(o.disc_mlm_weight) and o.disc_mlm_weight >= 0):
        problems.append(f"objective.disc_mlm_weight = {o.disc_mlm_weight} must be a finite number >= 0 (0 = off)")
    if not (math.isfinite(o.disc_scl_weight) and o.disc_scl_weight >= 0):
        problems.append(f"objective.disc_scl_weight = {o.disc_scl_weight} must be a finite number >= 0 (0 = off)")
    if not 0 < o.scl_rows <= 1:
        problems.append(f"objective.scl_rows = {o.scl_rows} must be in (0, 1]: the share of rows seen uncorrupted too")
    if not (math.isfinite(o.scl_temperature) and o.scl_temperature > 0):
        problems.append(f"objective.scl_temperature = {o.scl_temperature} must be a finite number > 0")
    if m.hidden_size % m.num_heads:
        problems.append(f"model.hidden_size {m.hidden_size} is not divisible by model.num_heads {m.num_heads}")
    if not 0 < m.generator_hidden_ratio <= 1:
        problems.append(f"model.generator_hidden_ratio = {m.generator_hidden_ratio} must be in (0, 1]")
    archs = {m.tower_arch("generator", o.kind), m.tower_arch("discriminator", o.kind)}
    if m.generator_arch and o.kind != "electra":
        problems.append(f"model.generator_arch = {m.generator_arch}: an MLM run has one tower, of model.arch; drop the "
                        "key or set objective.kind=electra")
    if o.kind == "electra" and o.embedding_sharing == "gdes" and "mpnet" in archs:
        g_width, d_width = m.table_width("generator", o.kind), m.table_width("discriminator", o.kind)
        if g_width != d_width:
            g_arch = m.tower_arch("generator", o.kind)
            fix = (f"model.generator_hidden_ratio={d_width / m.hidden_size:g} (a generator {d_width} wide)"
                   if g_arch == "mpnet" else f"model.embedding_size={d_width}")
            problems.append(f"GDES shares the word table, and the generator's ({g_arch}, {g_width} wide) does not "
                            f"match the discriminator's ({d_width}); MPNet has no embedding projection, so an MPNet "
                            f"tower's table is as wide as the tower. Set {fix}, making the generator smaller with "
                            "model.generator_layers (as DeBERTa-v3 does), or objective.embedding_sharing=none")
    if "mpnet" in archs:
        if t.activation_checkpointing:
            problems.append("train.activation_checkpointing: transformers' MPNet does not support it; set it false "
                            "or use electra for model.arch (and model.generator_arch)")
        if cfg.data.two_segments:
            problems.append("data.two_segments needs token types, which an MPNet tower does not have; use electra "
                            "for model.arch (and model.generator_arch) or data.two_segments=false")
    if cfg.data.seq_len > m.max_position_embeddings:
        problems.append(f"data.seq_len {cfg.data.seq_len} exceeds model.max_position_embeddings "
                        f"{m.max_position_embeddings}; raise the latter or shorten the rows")
    if t.global_batch <= 0 or t.grad_accum <= 0 or t.micro_batch < 0:
        problems.append("train.global_batch and train.grad_accum must be > 0, train.micro_batch >= 0")
    if t.max_steps <= 0:
        problems.append(f"train.max_steps = {t.max_steps} must be > 0")
    op = cfg.optim
    if not (math.isfinite(op.lr) and op.lr > 0):
        problems.append(f"optim.lr = {op.lr} must be a finite number > 0")
    if not (math.isfinite(op.generator_lr) and op.generator_lr >= 0):
        problems.append(f"optim.generator_lr = {op.generator_lr} must be a finite number >= 0 (0: optim.lr)")
    elif op.generator_lr > 0 and o.kind != "electra":
        problems.append(f"optim.generator_lr = {op.generator_lr} sets an ELECTRA run's generator rate; under "
                        f"objective.kind={o.kind} the masked LM learns at optim.lr: drop the key or set that")
    for key in ("watchdog_warn_s", "watchdog_timeout_s"):
        if not getattr(t, key) >= 0:
            problems.append(f"train.{key} = {getattr(t, key)} must be >= 0 (0: off)")
    if o.disc_start_step < 0:
        problems.append(f"objective.disc_start_step = {o.disc_start_step} must be >= 0")
    if op.warmup_steps < 0:
        problems.append(f"optim.warmup_steps = {op.warmup_steps} must be >= 0")
    if not (math.isfinite(op.weight_decay) and op.weight_decay >= 0):
        problems.append(f"optim.weight_decay = {op.weight_decay} must be a finite number >= 0")
    if not (0 <= op.beta1 < 1 and 0 <= op.beta2 < 1):
        problems.append(f"optim.beta1 = {op.beta1}, optim.beta2 = {op.beta2}: each must be in [0, 1)")
    if not (math.isfinite(op.eps) and op.eps > 0):
        problems.append(f"optim.eps = {op.eps} must be a finite number > 0")
    if not 0 <= op.min_lr_ratio <= 1:
        problems.append(f"optim.min_lr_ratio = {op.min_lr_ratio} must be in [0, 1]")
    if not (math.isfinite(op.grad_clip) and op.grad_clip >= 0):
        problems.append(f"optim.grad_clip = {op.grad_clip} must be a finite number >= 0 (0: no clipping)")
    if not 0 < op.encoder_layer_lr_decay <= 1:
        problems.append(f"optim.encoder_layer_lr_decay = {op.encoder_layer_lr_decay} must be in (0, 1] (1: off)")
    if cfg.checkpoint.every <= 0:
        problems.append(f"checkpoint.every = {cfg.checkpoint.every} must be > 0 (steps between checkpoints)")
    if cfg.checkpoint.keep_last < 0:
        problems.append(f"checkpoint.keep_last = {cfg.checkpoint.keep_last} must be >= 0 (0: keep all)")
    if cfg.logging.wandb:
        if importlib.util.find_spec("wandb") is None:
            problems.append("logging.wandb is true but the wandb package is not installed: pip install wandb (or "
                            "pip install 'gpt_ds[wandb]'), or set logging.wandb=false")
    if cfg.logging.every <= 0:
        problems.append(f"logging.every = {cfg.logging.every} must be > 0 (steps between metric records)")
    for name in ("hidden_dropout", "attention_dropout"):
        if not 0 <= getattr(m, name) < 1:
            problems.append(f"model.{name} = {getattr(m, name)} must be in [0, 1)")
    for s in cfg.data.sources:
        if s.weight <= 0:
            problems.append(f"data.sources entry '{s.path}' has weight {s.weight}; weights must be > 0")
    if cfg.data.synthetic and m.vocab_size <= 0:
        problems.append("data.synthetic needs model.vocab_size > 0")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class BatchLayout:
    global_batch: int
    micro_batch: int
    grad_accum: int
    world_size: int


def batch_layout(cfg: Config, world_size: int) -> BatchLayout:
    """global = micro x accumulation x data-parallel ranks, checked before launch."""
    t = cfg.train
    if t.micro_batch == 0:
        denom = t.grad_accum * world_size
        if t.global_batch % denom:
            raise ConfigError(
                f"train.global_batch {t.global_batch} is not divisible by train.grad_accum {t.grad_accum} x "
                f"{world_size} ranks; pick a global batch that is a multiple of {denom} or change train.grad_accum")
        micro = t.global_batch // denom
    else:
        micro = t.micro_batch
        if micro * t.grad_accum * world_size != t.global_batch:
            raise ConfigError(
                f"train.global_batch {t.global_batch} != train.micro_batch {micro} x train.grad_accum {t.grad_accum} x "
                f"{world_size} ranks = {micro * t.grad_accum * world_size}; set train.micro_batch=0 to derive it")
    return BatchLayout(t.global_batch, micro, t.grad_accum, world_size)


def dump_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
