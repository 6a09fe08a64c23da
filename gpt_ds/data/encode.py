"""Text parts -> token ids: the hot loop of `prepare` and of text sources tokenized at open time.

Two engines give the same ids. `hf`: the folder's tokenizer.json through the Rust `tokenizers` library (no special
tokens, no offsets). `spm`: for folders made by `gpt-ds tokenizer train`, the SentencePiece model they were converted
from, about 3x faster on one core. The spm path spot-checks one part in CHECK_EVERY (chosen by content, so the
choice does not depend on batching) against tokenizer.json and stops on any difference: the store must hold exactly
what the Hugging Face tokenizer gives, since that is what fine-tuning will use.
"""
from __future__ import annotations

import itertools
import zlib
from pathlib import Path

import numpy as np

from gpt_ds.errors import GptDsError

CHECK_EVERY = 64
ENGINES = ("auto", "hf", "spm")


class Encoder:
    """Encodes parts without special tokens; a document is the concatenation of its parts' ids."""

    def __init__(self, tokenizer_dir: str | Path, engine: str = "auto"):
        from tokenizers import Tokenizer

        d = Path(tokenizer_dir)
        path = d / "tokenizer.json"
        if not path.is_file():
            raise GptDsError(f"tokenizer folder '{d}' has no tokenizer.json (a fast tokenizer is needed)")
        if engine not in ENGINES:
            raise GptDsError(f"encoder engine {engine!r} is not one of {ENGINES}")
        self.dir = d
        self.tok = Tokenizer.from_file(str(path))
        self.tok.no_truncation()
        self.tok.no_padding()
        self._hf_batch = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        own = (d / "sentencepiece.model").is_file() and (d / "gpt_ds_tokenizer.json").is_file()
        if engine == "spm" and not own:
            raise GptDsError(f"tokenizer folder '{d}' was not made by `gpt-ds tokenizer train`; use engine hf")
        self.sp = None
        if own and engine in ("auto", "spm"):
            import sentencepiece as spm
            self.sp = spm.SentencePieceProcessor(model_file=str(d / "sentencepiece.model"))
        self.engine = "spm" if self.sp is not None else "hf"

    def _hf(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._hf_batch(texts, add_special_tokens=False)]

    def encode_lists(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self.sp is None:
            return self._hf(texts)
        ids = self.sp.encode(texts, num_threads=1)
        picks = [i for i, t in enumerate(texts) if zlib.crc32(t[:256].encode("utf-8", "replace")) % CHECK_EVERY == 0]
        if picks:
            for i, ref in zip(picks, self._hf([texts[i] for i in picks])):
                if ids[i] != ref:
                    raise GptDsError(f"the SentencePiece fast path disagrees with {self.dir}/tokenizer.json on text "
                                     f"starting {texts[i][:60]!r}; re-run with --encoder hf")
        return ids

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(all ids concatenated as uint32, ids per text as int64)."""
        ids = self.encode_lists(texts)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        stream = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.uint32, count=int(lengths.sum()))
        return stream, lengths

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(x, dtype=np.uint32) for x in self.encode_lists(texts)]


def encode_documents(encoder: Encoder, parts: list[tuple[str, bool]], carry: int = 0):
    """(text, last) parts in order -> (token stream uint32, lengths of the documents finished here, tokens of an
    unfinished last document, documents that tokenized to nothing).

    `carry`: tokens of the unfinished document the previous batch ended with (they count toward its length)."""
    stream, per_part = encoder.encode_flat([t for t, _ in parts])
    lengths, cur, dropped = [], carry, 0
    for n, (_, last) in zip(per_part.tolist(), parts):
        cur += n
        if last:
            if cur:
                lengths.append(cur)
            else:
                dropped += 1
            cur = 0
    return stream, np.asarray(lengths, dtype=np.int64), cur, dropped
