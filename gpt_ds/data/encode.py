"""Text parts -> token ids with the Rust tokenizer directly (no Python-side BatchEncoding, no offsets): the hot loop of
`prepare` and of text sources tokenized at open time."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt_ds.errors import GptDsError


class Encoder:
    """Encodes parts without special tokens; a document is the concatenation of its parts' ids."""

    def __init__(self, tokenizer_dir: str | Path):
        from tokenizers import Tokenizer

        path = Path(tokenizer_dir) / "tokenizer.json"
        if not path.is_file():
            raise GptDsError(f"tokenizer folder '{tokenizer_dir}' has no tokenizer.json (a fast tokenizer is needed)")
        self.tok = Tokenizer.from_file(str(path))
        self.tok.no_truncation()
        self.tok.no_padding()
        self._fast = hasattr(self.tok, "encode_batch_fast")

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        if not texts:
            return []
        enc = self.tok.encode_batch_fast if self._fast else self.tok.encode_batch
        return [np.asarray(e.ids, dtype=np.uint32) for e in enc(texts, add_special_tokens=False)]


def encode_documents(encoder: Encoder, parts: list[tuple[str, bool]], carry: int = 0):
    """(text, last) parts in order -> (token stream uint32, lengths of the documents finished here, tokens of an
    unfinished last document, documents that tokenized to nothing).

    `carry`: tokens of the unfinished document the previous batch ended with (they count toward its length)."""
    ids = encoder.encode([t for t, _ in parts])
    lengths, cur, dropped = [], carry, 0
    for arr, (_, last) in zip(ids, parts):
        cur += len(arr)
        if last:
            if cur:
                lengths.append(cur)
            else:
                dropped += 1
            cur = 0
    stream = np.concatenate(ids) if ids else np.zeros(0, np.uint32)
    return stream, np.asarray(lengths, dtype=np.int64), cur, dropped
