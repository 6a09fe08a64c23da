"""`gpt-ds index STORE --seq-len L`: the sample index of a store for one row length, built once and memory-mapped;
and `open_store_dataset`, a store plus its index as the row dataset training reads (the package's __init__ knows
only the files).

rows.npy holds one (start, end, split) triple of global token positions per row (the packing rule is in
gpt_ds.data.packing). It is cached under index/L<len>-<key>, key = hash of the shards' sha256, the length and the
packing rule, so several lengths live side by side, a rebuilt store never meets a stale index, and training opens it
in time independent of the corpus size. Built in parallel over shards; written aside then renamed.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from gpt_ds.data.datasets import PackedDataset
from gpt_ds.data.packing import MAX_EMPTY, ROW_COLUMNS, cut_points, pack_rows
from gpt_ds.data.store import StoreShard, read_manifest
from gpt_ds.data.tokenizer import tokenizer_fingerprint, tokenizer_info
from gpt_ds.errors import GptDsError

PACKING_VERSION = 1


def index_key(m: dict, seq_len: int, pairs: bool) -> str:
    blob = json.dumps({"shards": [s["sha256"] for s in m["shards"]], "seq_len": int(seq_len), "pairs": bool(pairs),
                       "packing": PACKING_VERSION, "max_empty": MAX_EMPTY,
                       "sentence_end_ids": m["tokenizer"]["sentence_end_ids"]})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def index_dir(root: Path, m: dict, seq_len: int, pairs: bool) -> Path:
    return Path(root) / "index" / f"L{seq_len}{'-pairs' if pairs else ''}-{index_key(m, seq_len, pairs)}"


def _shard_rows(args) -> np.ndarray:
    root, i, entry, dtype, table, seq_len, pairs, offset = args
    sh = StoreShard(Path(root), i, entry, dtype)
    tokens = np.asarray(sh.tokens)
    cuts = cut_points(tokens, sh.doc_starts, table)
    return pack_rows(len(tokens), sh.doc_starts, cuts, seq_len, pairs, offset=offset)


HEADER_BYTES = 128  # a fixed-size .npy header, written last, so rows stream to disk as shards are packed


def _npy_header(n_rows: int) -> bytes:
    text = repr({"descr": "<i8", "fortran_order": False, "shape": (n_rows, ROW_COLUMNS)})
    body_len = HEADER_BYTES - 10
    body = (text + " " * (body_len - 1 - len(text)) + "\n").encode("latin1")
    header = b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body
    assert len(header) == HEADER_BYTES, len(header)
    return header


def build_index(root, seq_len: int, pairs: bool = False, workers: int = 1, quiet: bool = True,
                pool=None) -> Path:
    """Build (or find) the index of `root` for rows of `seq_len`; returns its folder. Memory stays flat: each
    shard's rows go to disk as they come (in shard order), from `pool` (a multiprocessing pool) or a new one."""

    root = Path(root)
    m = read_manifest(root)
    out = index_dir(root, m, seq_len, pairs)
    if (out / "rows.npy").is_file():
        return out
    t0 = time.perf_counter()
    table = np.zeros(m["vocab_size"], dtype=bool)
    table[np.asarray(m["tokenizer"]["sentence_end_ids"], dtype=np.int64)] = True
    offsets = np.concatenate([[0], np.cumsum([s["tokens"] for s in m["shards"]])]).astype(np.int64)
    jobs = [(str(root), i, e, m["dtype"], table, seq_len, pairs, int(offsets[i])) for i, e in enumerate(m["shards"])]
    own_pool = None
    if pool is None and workers > 1 and len(jobs) > 1:
        pool = own_pool = mp.get_context("fork").Pool(min(workers, len(jobs)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        per_shard = []
        with open(tmp / "rows.npy", "wb") as f:
            f.write(b"\0" * HEADER_BYTES)
            results = pool.imap(_shard_rows, jobs, chunksize=1) if pool is not None else map(_shard_rows, jobs)
            for rows in results:
                f.write(np.ascontiguousarray(rows, dtype="<i8").tobytes())
                per_shard.append(len(rows))
            f.seek(0)
            f.write(_npy_header(sum(per_shard)))
        n = sum(per_shard)
        if n == 0:
            raise GptDsError(f"store {root} holds no tokens; nothing to index")
        content = int(m["totals"]["tokens"])
        meta = {"seq_len": seq_len, "pairs": pairs, "rows": n, "tokens": content,
                "fill": round(content / (n * seq_len), 4), "rows_per_shard": per_shard,
                "key": index_key(m, seq_len, pairs), "packing_version": PACKING_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished the same index first: identical content
            if not (out / "rows.npy").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if own_pool is not None:
            own_pool.terminate()
    if not quiet:
        print(json.dumps({"index": str(out), "rows": n, "fill": meta["fill"],
                          "seconds": round(time.perf_counter() - t0, 2)}))
    return out


def load_index(root, m: dict, seq_len: int, pairs: bool) -> np.ndarray:
    """The memory-mapped rows of an index that `prepare` or `gpt-ds index` built; never scans the corpus."""
    d = index_dir(Path(root), m, seq_len, pairs)
    path = d / "rows.npy"
    if not path.is_file():
        flag = " --two-segments" if pairs else ""
        raise GptDsError(f"store {root} has no sample index for seq_len {seq_len}{' (two segments)' if pairs else ''};"
                         f" build it once with `gpt-ds index {root} --seq-len {seq_len}{flag}` (no rank builds it "
                         f"at start, so that no rank scans the corpus)")
    try:
        rows = np.load(path, mmap_mode="r")
        meta = json.loads((d / "meta.json").read_text())
    except (ValueError, OSError, json.JSONDecodeError) as e:
        raise GptDsError(f"sample index {d} is damaged ({e}); delete the folder and re-run `gpt-ds index`") from None
    if rows.ndim != 2 or rows.shape != (meta["rows"], ROW_COLUMNS) or rows.dtype != np.int64:
        raise GptDsError(f"sample index {path} has shape {rows.shape}, expected ({meta['rows']}, {ROW_COLUMNS}); "
                         f"delete {d} and re-run `gpt-ds index`")
    return rows


def add_arguments(parser) -> None:
    parser.add_argument("store", help="a store built by `gpt-ds prepare`")
    parser.add_argument("--seq-len", type=int, nargs="+", required=True, help="row length(s), e.g. 128 512")
    parser.add_argument("--two-segments", action="store_true", help="index [CLS] A [SEP] B [SEP] rows")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))


def run(args) -> int:
    for L in args.seq_len:
        build_index(args.store, L, args.two_segments, workers=args.workers, quiet=False)
    return 0


def open_store_dataset(path, cfg) -> PackedDataset:
    """A store as a row dataset for cfg.data.seq_len; refuses a tokenizer other than the run's."""
    root = Path(path)
    m = read_manifest(root)
    tok_dir = str(root / "tokenizer")
    if cfg.data.tokenizer:
        if not Path(cfg.data.tokenizer).is_dir():
            raise GptDsError(f"data.tokenizer '{cfg.data.tokenizer}' is not a folder")
        fp = tokenizer_fingerprint(tokenizer_info(cfg.data.tokenizer))
        if fp != m["tokenizer"]["fingerprint"]:
            raise GptDsError(f"store {root} was made with another tokenizer (fingerprint "
                             f"{m['tokenizer']['fingerprint']}) than data.tokenizer={cfg.data.tokenizer} ({fp}); "
                             f"re-run `gpt-ds prepare --tokenizer {cfg.data.tokenizer}` or drop data.tokenizer")
        tok_dir = cfg.data.tokenizer
    rows = load_index(root, m, cfg.data.seq_len, cfg.data.two_segments)
    entries = m["shards"]
    offsets = np.concatenate([[0], np.cumsum([e["tokens"] for e in entries])]).astype(np.int64)
    return PackedDataset(shards=[None] * len(entries), shard_offsets=offsets, rows=rows, seq_len=cfg.data.seq_len,
                         pairs=cfg.data.two_segments, vocab_size=m["vocab_size"], specials=m["tokenizer"]["specials"],
                         tokenizer_dir=tok_dir, fingerprint=m["tokenizer"]["fingerprint"], seed=cfg.run.seed,
                         name=str(root), open_shard=lambda i: StoreShard(root, i, entries[i], m["dtype"]))
