"""Labeled splits for `gpt-ds finetune`: local jsonl / csv / tsv / parquet files or a `save_to_disk` folder.

Everything the user can get wrong is checked here, before a model is built, with one line that names the file and
the field: a missing file or field, an empty split, labels that occur only in the validation or test split, a model
folder without a tokenizer. Rows whose text or label is empty are skipped, counted and reported, never dropped
silently.
"""
from __future__ import annotations

import difflib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from transformers import AutoTokenizer

from gpt_ds.errors import GptDsError

SPLITS = ("train", "validation", "test")
FORMATS = ".jsonl/.json(.gz), .csv(.gz), .tsv, .parquet, or a folder saved with datasets' save_to_disk"


@dataclass
class Split:
    name: str
    source: str  # the file (or "folder:split") it came from, for messages
    texts: list[str]
    pairs: list[str] | None
    labels: list  # raw label values, as in the file
    skipped: int = 0  # rows without text or label


@dataclass
class Task:
    """Every split, plus the label vocabulary (from the training split: a model can only predict what it saw)."""
    splits: dict[str, Split]
    label_names: list[str] = field(default_factory=list)

    def label_ids(self, split: str) -> list[int]:
        index = {name: i for i, name in enumerate(self.label_names)}
        return [index[_label_key(v)] for v in self.splits[split].labels]


def _label_key(value) -> str:
    """Labels compare as text: 1, "1" and 1.0 in different files are the same class; True -> "true"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _sort_labels(keys: set[str]) -> list[str]:
    """Numeric labels in numeric order (0, 1, 2, 10), others alphabetically: label ids are stable across runs."""
    def key(k: str):
        try:
            return (0, float(k), k)
        except ValueError:
            return (1, 0.0, k)
    return sorted(keys, key=key)


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "disk"
        raise GptDsError(f"{path}: a folder, but not one written by datasets' save_to_disk (no dataset_dict.json or "
                         f"state.json); give a file ({FORMATS})")
    for suffixes, fmt in (((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson"), "json"),
                          ((".csv", ".csv.gz"), "csv"), ((".tsv", ".tsv.gz"), "tsv"), ((".parquet",), "parquet")):
        if name.endswith(suffixes):
            return fmt
    raise GptDsError(f"{path}: unknown file type; use {FORMATS}")


def _read(path: Path, role: str):
    """One split as a `datasets.Dataset` (library readers; errors rephrased with the file named)."""

    if not path.exists():
        raise GptDsError(f"--{role} {path}: no such file or folder")
    fmt = _format_of(path)
    if fmt != "disk" and path.stat().st_size == 0:
        raise GptDsError(f"--{role} {path}: the file is empty")
    datasets.disable_progress_bars()
    try:
        if fmt == "disk":
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if role not in loaded:
                    raise GptDsError(f"--{role} {path}: the saved DatasetDict has no '{role}' split (splits: "
                                     f"{sorted(loaded)}); pass a folder or file per split")
                return loaded[role], f"{path}:{role}"
            return loaded, str(path)
        kwargs = {"delimiter": "\t"} if fmt == "tsv" else {}
        builder = "csv" if fmt == "tsv" else fmt
        return datasets.load_dataset(builder, data_files=str(path), split="train", keep_in_memory=True,
                                     **kwargs), str(path)
    except GptDsError:
        raise
    except Exception as e:  # pyarrow / pandas / json errors: say which file, keep the library's reason
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "corresponds to no data" in reason:  # datasets' words for a file with a header and no rows
            raise GptDsError(f"--{role} {path}: no rows") from None
        raise GptDsError(f"--{role} {path}: could not read it as {fmt}: {reason}") from None


def _column(ds, source: str, name: str, flag: str) -> list:
    if name not in ds.column_names:
        close = difflib.get_close_matches(name, ds.column_names, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise GptDsError(f"{source}: no field '{name}' ({flag}); its fields are {ds.column_names}{hint}")
    return ds[name]


def _empty(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and v != v)


def read_split(path: Path, role: str, text_field: str, pair_field: str | None, label_field: str) -> Split:
    ds, source = _read(path, role)
    if ds.num_rows == 0:
        raise GptDsError(f"--{role} {source}: no rows")
    texts = _column(ds, source, text_field, "--text-field")
    pairs = _column(ds, source, pair_field, "--text-pair-field") if pair_field else None
    labels = _column(ds, source, label_field, "--label-field")
    keep = [i for i in range(len(texts))
            if not (_empty(texts[i]) or _empty(labels[i]) or (pairs is not None and _empty(pairs[i])))]
    if not keep:
        raise GptDsError(f"--{role} {source}: all {len(texts)} rows lack a '{text_field}' or '{label_field}' value")
    return Split(role, source, [str(texts[i]) for i in keep], [str(pairs[i]) for i in keep] if pairs else None,
                 [labels[i] for i in keep], skipped=len(texts) - len(keep))


def carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """A fixed, seeded share of the training rows held out for selection (the same whatever the fine-tuning seed)."""
    n = len(train.texts)
    n_val = int(round(n * fraction))
    if not 0 < n_val < n:
        raise GptDsError(f"--train {train.source}: {n} rows cannot give a validation share of {fraction}; pass "
                         f"--validation or change --validation-fraction")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])

    def take(idx: list[int], name: str) -> Split:
        return Split(name, f"{train.source} ({name} share)", [train.texts[i] for i in idx],
                     [train.pairs[i] for i in idx] if train.pairs else None, [train.labels[i] for i in idx])
    new_train = take(train_idx, "train")
    new_train.skipped = train.skipped
    return new_train, take(val_idx, "validation")


def subsample(train: Split, rows: int, seed: int) -> Split:
    """A fixed, seeded subset of the training rows (the label-scarce setting), the same for every model and seed."""
    if rows >= len(train.texts):
        return train
    idx = sorted(random.Random(seed).sample(range(len(train.texts)), rows))
    out = Split(train.name, f"{train.source} ({rows} of {len(train.texts)} rows)", [train.texts[i] for i in idx],
                [train.pairs[i] for i in idx] if train.pairs else None, [train.labels[i] for i in idx])
    out.skipped = train.skipped
    return out


def load_task(paths: dict[str, str | None], text_field: str, pair_field: str | None, label_field: str, *,
              validation_fraction: float = 0.1, split_seed: int = 0, train_rows: int = 0) -> Task:
    """paths: {"train": ..., "validation": ... or None, "test": ... or None}."""
    if not paths.get("train"):
        raise GptDsError("--train is required")
    paths = dict(paths)
    train = Path(paths["train"])
    if (train / "dataset_dict.json").is_file():  # a saved DatasetDict also gives the splits not passed on their own
        names = json.loads((train / "dataset_dict.json").read_text()).get("splits", [])
        for role in ("validation", "test"):
            if not paths.get(role) and role in names:
                paths[role] = str(train)
    splits = {role: read_split(Path(p), role, text_field, pair_field, label_field)
              for role, p in paths.items() if p}
    if "validation" not in splits:
        splits["train"], splits["validation"] = carve_validation(splits["train"], validation_fraction, split_seed)
    if train_rows:
        splits["train"] = subsample(splits["train"], train_rows, split_seed)
    names = _sort_labels({_label_key(v) for v in splits["train"].labels})
    if len(names) < 2:
        raise GptDsError(f"--train {splits['train'].source}: field '{label_field}' has a single value {names}; a "
                         f"classifier needs at least two labels")
    for role in ("validation", "test"):
        if role in splits:
            unseen = _sort_labels({_label_key(v) for v in splits[role].labels} - set(names))
            if unseen:
                raise GptDsError(f"--{role} {splits[role].source}: field '{label_field}' has labels {unseen[:5]} that "
                                 f"the training split never has (train labels: {names[:10]}); fix the split")
    return Task(splits, names)


def load_tokenizer(model_dir: Path):
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                                                    "spiece.model", "sentencepiece.bpe.model")):
        raise GptDsError(f"{model_dir}: no tokenizer files (tokenizer.json / tokenizer_config.json); export with the "
                         f"tokenizer (gpt-ds export) or copy the tokenizer into the model folder")
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise GptDsError(f"{model_dir}: its tokenizer does not load: {str(e).splitlines()[0]}") from None


def encode(tokenizer, split: Split, label_ids: list[int], max_length: int):
    """Token ids per row (padding comes later, per batch), as a list of feature dicts a collator pads."""
    enc = tokenizer(split.texts, split.pairs, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    return [dict({k: enc[k][i] for k in keys}, labels=label_ids[i]) for i in range(len(split.texts))]
