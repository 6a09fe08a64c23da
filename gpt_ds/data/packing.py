"""The packing rule: a token stream with document starts -> fixed-length rows, nothing dropped.

A row is a contiguous range [start, end) of one shard's token stream, written as
    [CLS] piece [SEP] piece [SEP] ... [PAD]...      (a piece: the part of one document inside the row)
so short documents share a row, separated by [SEP], and a long document continues on the next row. A row ends at the
last sentence end (or document end) that fits; it is cut mid-sentence only when no sentence end fits or when ending
at one would leave more than MAX_EMPTY of the row empty. With `pairs`, a row is two segments [CLS] A [SEP] B [SEP]
(token_type_ids 0 then 1): B starts at the row's first document start, else at the sentence end nearest the middle.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right

import numpy as np

ROW_COLUMNS = 3  # start, end, split (global token positions; split = end in single-segment rows)


def cut_points(tokens: np.ndarray, doc_starts: np.ndarray, sentence_end: np.ndarray) -> np.ndarray:
    """Sorted positions where a row may end: after a sentence-final token, at document starts and at the end."""
    n = len(tokens)
    ends = np.flatnonzero(sentence_end[np.asarray(tokens)]) + 1 if n else np.zeros(0, np.int64)
    return np.unique(np.concatenate([ends.astype(np.int64), doc_starts[1:].astype(np.int64), [n]]))


MAX_EMPTY = 0.125  # a row may end at a sentence end if that leaves at most this share of it empty


def pack_rows(n_tokens: int, doc_starts: np.ndarray, cuts: np.ndarray, seq_len: int, pairs: bool = False,
              offset: int = 0) -> np.ndarray:
    """Rows (n, 3) int64 [start, end, split] covering [0, n_tokens) exactly, shifted by `offset`."""
    L = int(seq_len)
    min_sep = 2 if pairs else 1
    if L < 3 + min_sep:
        raise ValueError(f"seq_len {L} is too short to hold a row")
    docs = np.asarray(doc_starts, dtype=np.int64).tolist()   # bisect on lists: ~10x faster than scalar searchsorted
    cuts = np.asarray(cuts, dtype=np.int64).tolist()
    rows = []
    s = 0
    while s < n_tokens:
        window = s + L - 1 - min_sep             # the largest end if the row held one piece
        lo, hi = bisect_right(cuts, s), bisect_right(cuts, window)
        first_doc = bisect_right(docs, s)
        e = -1
        for k in range(hi - 1, lo - 1, -1):      # the last cut that fits with its [SEP]s (usually the first tried)
            c = cuts[k]
            pieces = bisect_left(docs, c) - first_doc + 1
            if 1 + (c - s) + max(pieces, min_sep) <= L:
                e = c
                break
        if e < 0 or (e - s < (L - 2) * (1 - MAX_EMPTY) and hi > lo and e == cuts[hi - 1] and e < n_tokens):
            pieces = bisect_right(docs, window) - first_doc + 1
            hard = min(s + L - 1 - max(pieces, min_sep), n_tokens)
            e = max(e, hard)
        split = e
        if pairs:
            inner = bisect_left(docs, e)
            if inner > first_doc:
                split = docs[first_doc]
            else:
                mid = (s + e) // 2
                inside = cuts[bisect_right(cuts, s):bisect_left(cuts, e)]
                split = min(inside, key=lambda c: (abs(c - mid), c)) if inside else max(s + 1, mid)
        rows.append((s + offset, e + offset, split + offset))
        s = e
    return np.asarray(rows, dtype=np.int64).reshape(-1, ROW_COLUMNS)


def write_row(out_ids: np.ndarray, out_types: np.ndarray, tokens: np.ndarray, inner_docs: np.ndarray,
              split: int, pairs: bool, cls_id: int, sep_id: int) -> int:
    """Fill one output row (already [PAD]-filled) from the row's tokens; returns the number of real tokens.

    inner_docs: document starts strictly inside the row, relative to its start; split: relative B start."""
    bounds = list(inner_docs)
    if pairs and 0 < split < len(tokens) and split not in bounds:
        bounds = sorted(bounds + [split])
    out_ids[0] = cls_id
    pos, prev = 1, 0
    for b in bounds + [len(tokens)]:
        n = b - prev
        out_ids[pos:pos + n] = tokens[prev:b]
        pos += n
        out_ids[pos] = sep_id
        if pairs and b == split:
            out_types[pos + 1:] = 1       # segment B starts after the [SEP] that closes A
        pos += 1
        prev = b
    if pairs:
        out_types[pos:] = 0               # padding has type 0
    return pos
