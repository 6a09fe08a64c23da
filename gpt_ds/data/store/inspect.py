"""`gpt-ds inspect STORE`: the manifest's totals (and skipped counts) as JSON; --verify checks every shard's sha256."""
from __future__ import annotations

import json
from pathlib import Path

from gpt_ds.data.store import read_manifest, verify_store
from gpt_ds.errors import GptDsError


def summary(store) -> dict:
    m = read_manifest(store)
    indexes = sorted(p.name for p in (Path(store) / "index").glob("L*") if (p / "rows.npy").is_file())
    return {"store": str(store), **m["totals"], "dtype": m["dtype"], "vocab_size": m["vocab_size"],
            "tokenizer_fingerprint": m["tokenizer"]["fingerprint"], "sources": len(m["sources"]),
            "skipped": m["skipped"], "indexes": indexes}


def add_arguments(parser) -> None:
    parser.add_argument("store", help="a store built by `gpt-ds prepare`")
    parser.add_argument("--verify", action="store_true", help="check every shard's sha256 (reads the whole store)")


def run(args) -> int:
    out = summary(args.store)
    if args.verify:
        bad = verify_store(args.store)
        out["verified"] = not bad
        if bad:
            print(json.dumps(out))
            raise GptDsError(f"{len(bad)} problem(s): {bad[:5]}; re-run `gpt-ds prepare`")
    print(json.dumps(out))
    return 0
