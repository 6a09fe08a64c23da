"""`gpt-ds prepare --input PATHS... --tokenizer DIR --out STORE`: corpus -> sharded token store (the format: this
package's __init__).

Streaming: the main process reads documents in parts, worker processes tokenize batches of parts, and the main
process writes results in input order into shards, with a bounded number of batches in flight, so memory stays flat as
the corpus grows and the store is the same whatever the number of workers. Shards close at the first document end
past --shard-size. Work happens in STORE.partial; after each shard, progress.json records where the next shard
starts, so a re-run resumes there (finished shards are kept); at the end the folder is renamed to STORE. The same
inputs give a byte-identical store (no timestamps; document order is the sorted input order).
"""
from __future__ import annotations

import collections
import ctypes
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt_ds.data.encode import Encoder
from gpt_ds.data.readers import ReadStats, expand_inputs, iter_parts
from gpt_ds.data.store import FORMAT, VERSION, read_manifest
from gpt_ds.data.store.index import build_index
from gpt_ds.data.store.writer import ShardWriter
from gpt_ds.data.tokenizer import (sentence_end_table, special_ids, tokenizer_fingerprint, tokenizer_info,
                                   vocab_size_of)
from gpt_ds.errors import GptDsError

BATCH_CHARS = 1 << 18  # characters per tokenization batch


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*", str(text), re.I)
    if not m:
        raise GptDsError(f"--shard-size '{text}' is not a size; use e.g. 256MB, 1GB or 65536")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return max(1, int(float(m.group(1)) * scale))


_ENCODER = None


def _fixed_malloc_thresholds() -> None:
    """glibc raises its mmap threshold each time a large block is freed, after which the ~MB token arrays passing
    through here fragment the heap and the main process grows with the corpus; fixed thresholds keep it flat."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 17)  # M_MMAP_THRESHOLD: blocks >= 128 KiB are mmap'ed and returned on free
        libc.mallopt(-1, 1 << 17)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _init_worker(tokenizer_dir: str, engine: str) -> None:
    global _ENCODER
    _ENCODER = Encoder(tokenizer_dir, engine)


def _encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _ENCODER.encode_flat(texts)


def _batches(inputs, start: tuple[int, int], text_field: str, txt_mode: str):
    """(input index, parts, input finished, reader stats) in input order, from the resume point `start`."""
    for i in range(start[0], len(inputs)):
        stats = ReadStats()
        parts, chars = [], 0
        for part in iter_parts(inputs[i], stats, text_field=text_field, txt_mode=txt_mode,
                               skip_docs=start[1] if i == start[0] else 0):
            parts.append(part)
            chars += len(part[0])
            if chars >= BATCH_CHARS:
                yield i, parts, False, stats
                parts, chars = [], 0
        yield i, parts, True, stats


def settings_key(inputs: list[dict], fingerprint: str, settings: dict) -> str:
    blob = json.dumps({"inputs": inputs, "tokenizer": fingerprint, "settings": settings, "version": VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _input_entry(inp) -> dict:
    p = inp.path
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return {"path": str(p), "format": inp.fmt, "bytes": size}


def prepare(inputs, tokenizer, out, *, workers: int = 1, shard_size="128MB", text_field: str = "text",
            txt_mode: str = "blank-line", seq_lens=(128, 512), two_segments: bool = False,
            encoder: str = "auto", quiet: bool = False) -> dict:
    """Build (or finish, or find up to date) the store at `out`; returns its manifest."""

    if not Path(tokenizer).is_dir():
        raise GptDsError(f"--tokenizer {tokenizer} is not a folder; train one with `gpt-ds tokenizer train`")
    tok = tokenizer_info(tokenizer)
    fp, vocab = tokenizer_fingerprint(tok), vocab_size_of(tok)
    dtype = "uint16" if vocab <= 1 << 16 else "uint32"
    items = expand_inputs(list(inputs))
    entries = [_input_entry(inp) for inp in items]
    settings = {"text_field": text_field, "txt_mode": txt_mode, "shard_bytes": parse_size(shard_size),
                "dtype": dtype}
    key = settings_key(entries, fp, settings)
    out = Path(out)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))

    if (out / "manifest.json").is_file():
        m = read_manifest(out)
        if m.get("settings_key") != key:
            raise GptDsError(f"{out} already holds a store made from other inputs, tokenizer or settings; choose "
                             f"another --out or delete {out}")
        say(f"prepare: {out} is complete and up to date; nothing to tokenize")
        for L in seq_lens:
            build_index(out, L, two_segments, workers=workers)
        return m
    if out.exists() and any(out.iterdir()):
        raise GptDsError(f"--out {out} exists and is not a token store; choose another --out")

    work = Path(str(out) + ".partial")
    progress = _load_progress(work, key, say)
    if not (work / "tokenizer" / "tokenizer.json").is_file():  # workers and training read this copy
        shutil.copytree(tokenizer, work / "tokenizer", dirs_exist_ok=True)
        if not (work / "tokenizer" / "tokenizer.json").is_file():  # e.g. a vocab.txt-only BERT folder
            tok.save_pretrained(str(work / "tokenizer"))
    tokenizer = work / "tokenizer"
    writer = ShardWriter(work, dtype, settings["shard_bytes"], progress)
    start = tuple(progress["resume"])
    if progress["shards"]:
        say(f"prepare: resuming after {len(progress['shards'])} finished shards (input {start[0]}, document "
            f"{start[1]})")

    _fixed_malloc_thresholds()
    t0, docs0 = time.perf_counter(), writer.documents
    bar = None if quiet else _progress_bar()
    pool = None
    if workers > 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(str(tokenizer), encoder))
    else:
        _init_worker(str(tokenizer), encoder)
    inflight = collections.deque()
    try:
        for i, parts, done, stats in _batches(items, start, text_field, txt_mode):
            texts = [t for t, _ in parts]
            job = pool.apply_async(_encode, (texts,)) if pool else None
            inflight.append((i, parts, done, stats, job if pool else _encode(texts)))
            while inflight and (len(inflight) > 2 * max(1, workers) or not pool):
                _write(writer, entries, inflight.popleft(), bar, t0, docs0)
        while inflight:
            _write(writer, entries, inflight.popleft(), bar, t0, docs0)
        writer.finish()
        manifest = _manifest(writer, tok, key, dtype, vocab, settings)
        tmp = work / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        tmp.replace(work / "manifest.json")
        for L in seq_lens:  # the same worker processes pack the shards: memory stays what tokenizing took
            build_index(work, L, two_segments, workers=workers, pool=pool)
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()

    (work / "progress.json").unlink(missing_ok=True)
    work.rename(out)
    summary = {"store": str(out), **manifest["totals"], "skipped": manifest["skipped"],
               "seconds": round(time.perf_counter() - t0, 2)}
    say("prepare: " + json.dumps(summary))
    return manifest


def _manifest(writer, tok, key: str, dtype: str, vocab: int, settings: dict) -> dict:
    return {
        "format": FORMAT, "version": VERSION, "settings_key": key, "dtype": dtype, "vocab_size": vocab,
        "tokenizer": {"fingerprint": tokenizer_fingerprint(tok), "specials": special_ids(tok),
                      "sentence_end_ids": np.flatnonzero(sentence_end_table(tok)).tolist()},
        "settings": settings, "sources": writer.sources,
        "totals": {"documents": writer.documents, "tokens": writer.tokens, "shards": len(writer.shards),
                   "bytes": writer.tokens * np.dtype(dtype).itemsize},
        "skipped": writer.skipped(), "shards": writer.shards}


def _write(writer, entries, item, bar, t0, docs0) -> None:
    i, parts, done, stats, result = item
    stream, lengths = result.get() if hasattr(result, "get") else result
    writer.add(i, parts, stream, lengths)
    if done:
        writer.end_input(i, entries[i], stats)
    if bar is not None:
        dt = max(1e-9, time.perf_counter() - t0)
        bar.n = writer.documents
        bar.set_postfix_str(f"docs/s={(writer.documents - docs0) / dt:,.0f} tokens/s={writer.new_tokens / dt:,.0f}",
                            refresh=False)
        bar.refresh()


def _progress_bar():
    return tqdm(unit=" docs", file=sys.stderr, mininterval=1.0, dynamic_ncols=True, desc="prepare",
                disable=not sys.stderr.isatty())  # a job log gets the final JSON summary, not redraws


def _load_progress(work: Path, key: str, say) -> dict:
    fresh = {"settings_key": key, "shards": [], "resume": [0, 0], "sources": [], "current": {}}
    path = work / "progress.json"
    if path.is_file():
        try:
            progress = json.loads(path.read_text())
        except json.JSONDecodeError:
            progress = {}
        if progress.get("settings_key") == key:
            return progress
        say(f"prepare: {work} was started with other inputs or settings; starting over")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return fresh


def add_arguments(parser) -> None:
    parser.add_argument("--input", nargs="+", required=True, help="files, folders or globs: .txt .jsonl(.gz) "
                        ".parquet .csv, or datasets saved with save_to_disk")
    parser.add_argument("--tokenizer", required=True, help="a Hugging Face tokenizer folder")
    parser.add_argument("--out", required=True, help="the store folder to create")
    parser.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--shard-size", default="128MB", help="token bytes per shard (e.g. 64MB, 1GB)")
    parser.add_argument("--text-field", default="text", help="the text field of jsonl/csv/parquet/datasets records")
    parser.add_argument("--doc-per-file", action="store_true",
                        help=".txt files hold one document each (default: blank lines separate documents)")
    parser.add_argument("--seq-len", type=int, nargs="*", default=[128, 512],
                        help="build the sample index for these row lengths (more later with `gpt-ds index`)")
    parser.add_argument("--two-segments", action="store_true", help="index [CLS] A [SEP] B [SEP] rows")
    parser.add_argument("--encoder", choices=["auto", "hf", "spm"], default="auto",
                        help="auto: SentencePiece's own encoder for tokenizers made by `gpt-ds tokenizer train` "
                             "(same ids, spot-checked against tokenizer.json), else tokenizer.json")
    parser.add_argument("--quiet", action="store_true")


def run(args) -> int:
    m = prepare(args.input, args.tokenizer, args.out, workers=args.workers, shard_size=args.shard_size,
                text_field=args.text_field, txt_mode="file" if args.doc_per_file else "blank-line",
                seq_lens=args.seq_len, two_segments=args.two_segments, encoder=args.encoder, quiet=args.quiet)
    print(json.dumps({"store": args.out, **m["totals"], "skipped": m["skipped"]}))
    return 0
