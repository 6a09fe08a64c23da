"""`gpt-ds tokenizer train`: a SentencePiece model trained on a streamed document sample, saved as a Hugging Face
fast-tokenizer folder with the special tokens [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.

The folder loads with `AutoTokenizer.from_pretrained(DIR)` (no remote code), puts [CLS] ... [SEP] around a sentence
and works with `pipeline("fill-mask")`. SentencePiece runs with byte fallback, so no character ever becomes [UNK].
Any other Hugging Face tokenizer folder works too; `load_tokenizer` checks that it has the special tokens we need.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np

from gpt_ds.data.readers import ReadStats, expand_inputs, iter_documents, split_parts
from gpt_ds.errors import GptDsError

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"}
SPECIAL_IDS = {"pad_id": 0, "unk_id": 1, "cls_id": 2, "sep_id": 3, "mask_id": 4}
SPM_LINE_CHARS = 4000  # SentencePiece skips longer "sentences"; longer lines are cut into parts first


# -------------------------------------------------------------------------------------------------------- training


def sample_documents(paths, sample_docs: int, seed: int = 0, **read_kw) -> tuple[list[str], ReadStats]:
    """A uniform reservoir sample of documents from the stream: memory holds at most `sample_docs` documents."""
    rng = random.Random(seed)
    stats = ReadStats()
    keep: list[str] = []
    for i, doc in enumerate(iter_documents(expand_inputs(list(paths)), stats, **read_kw)):
        if len(keep) < sample_docs:
            keep.append(doc)
        else:
            j = rng.randint(0, i)
            if j < sample_docs:
                keep[j] = doc
    return keep, stats


def _spm_lines(docs: list[str]):
    for doc in docs:
        for line in doc.split("\n"):
            line = line.strip()
            if line:
                yield from split_parts(line, SPM_LINE_CHARS)


def train_tokenizer(paths, vocab_size: int, out, *, model: str = "unigram", sample_docs: int = 100_000,
                    seed: int = 0, text_field: str = "text", character_coverage: float = 0.9995,
                    overwrite: bool = False, max_length: int = 512) -> Path:
    """Train SentencePiece on a document sample of `paths` and save a HF fast-tokenizer folder at `out`."""
    import sentencepiece as spm

    out = Path(out)
    if model not in ("unigram", "bpe"):
        raise GptDsError(f"--model must be unigram or bpe, got {model!r}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GptDsError(f"tokenizer output folder {out} already exists; pass --overwrite or choose another --out")
    if vocab_size < 300:
        raise GptDsError(f"--vocab-size {vocab_size} is too small: byte fallback alone takes 261 ids; use >= 300")
    docs, stats = sample_documents(paths, sample_docs, seed, text_field=text_field)
    if not docs:
        raise GptDsError(f"inputs {list(map(str, paths))} hold no non-empty document to train a tokenizer on")
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_spm_lines(docs), model_writer=proto, vocab_size=vocab_size, model_type=model,
            pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]",
            control_symbols=["[CLS]", "[SEP]", "[MASK]"], byte_fallback=True, character_coverage=character_coverage,
            max_sentence_length=4 * SPM_LINE_CHARS + 16, input_sentence_size=2_000_000, shuffle_input_sentence=True,
            seed_sentencepiece_size=1_000_000, num_threads=1, minloglevel=2)
    except RuntimeError as e:  # e.g. "Vocabulary size is too high (N). Please set it to a value <= M."
        raise GptDsError(f"SentencePiece training failed on {len(docs)} documents: {e}") from None
    tok = hf_tokenizer_from_spm(proto.getvalue())
    _save(tok, proto.getvalue(), out, max_length, meta={
        "model": model, "vocab_size": vocab_size, "sample_docs": len(docs), "seed": seed,
        "inputs": [str(p) for p in paths], "read": vars(stats)})
    return out


def hf_tokenizer_from_spm(model_proto: bytes):
    """A `tokenizers.Tokenizer` equal to the SentencePiece model: same pieces, ids, normalizer and byte fallback."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    m = pb.ModelProto()
    m.ParseFromString(model_proto)
    pieces = [(p.piece, p.score) for p in m.pieces]
    if m.trainer_spec.model_type == pb.TrainerSpec.UNIGRAM:
        core = models.Unigram(pieces, unk_id=1, byte_fallback=True)
    else:
        vocab = {p: i for i, (p, _) in enumerate(pieces)}
        core = models.BPE(vocab, _bpe_merges(m, vocab), unk_token="[UNK]", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(core)
    norm = [normalizers.Precompiled(m.normalizer_spec.precompiled_charsmap)] \
        if m.normalizer_spec.precompiled_charsmap else [normalizers.NFKC()]
    tok.normalizer = normalizers.Sequence(norm + [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁",
                                                                                prepend_scheme="always", split=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS.values()])
    return tok


def _bpe_merges(m, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """SentencePiece BPE keeps pieces, not merges: a merge (a, b) exists where a, b and a+b are pieces, ranked by
    the id of a+b (SentencePiece's piece order is its merge order), then by the ids of a and b."""
    ranked = []
    for piece, idx in vocab.items():
        if m.pieces[idx].type != 1 or len(piece) < 2:  # normal pieces only
            continue
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in vocab and b in vocab:
                ranked.append((idx, vocab[a], vocab[b], a, b))
    ranked.sort()
    return [(a, b) for *_, a, b in ranked]


def _save(tok, model_proto: bytes, out: Path, max_length: int, meta: dict) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **SPECIAL_TOKENS,
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fast.save_pretrained(str(tmp))
        (tmp / "sentencepiece.model").write_bytes(model_proto)
        (tmp / "gpt_ds_tokenizer.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ loading, identity


def load_tokenizer(path):
    """A Hugging Face fast tokenizer from a folder; refuses one without the special tokens ELECTRA needs."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise GptDsError(f"tokenizer folder '{p}' does not exist; train one with `gpt-ds tokenizer train` "
                         f"or set data.tokenizer to a Hugging Face tokenizer folder")
    try:
        tok = AutoTokenizer.from_pretrained(str(p), use_fast=True, trust_remote_code=False)
    except Exception as e:  # transformers raises many types for a broken folder
        raise GptDsError(f"tokenizer folder '{p}' could not be loaded: {e}") from None
    if not getattr(tok, "is_fast", False):
        raise GptDsError(f"tokenizer '{p}' is not a fast tokenizer; add a tokenizer.json to the folder")
    missing = [n for n in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
               if getattr(tok, n + "_id", None) is None]
    if missing:
        raise GptDsError(f"tokenizer '{p}' lacks the special tokens {missing}; ELECTRA needs [PAD] [UNK] [CLS] "
                         f"[SEP] [MASK] (a BERT-style vocabulary has them)")
    return tok


class TokenizerInfo:
    """What data preparation needs from a tokenizer folder (vocabulary, special ids), read with the `tokenizers`
    library alone: no transformers import (seconds) in `prepare` and its workers."""

    def __init__(self, path, tok, specials: dict[str, int]):
        self.path, self._tok = Path(path), tok
        for name, idx in specials.items():
            setattr(self, name + "_id", idx)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)


def tokenizer_info(path):
    """TokenizerInfo when tokenizer.json and the special tokens are written down, else the transformers tokenizer."""
    from tokenizers import Tokenizer

    p = Path(path)
    conf: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (p / name).is_file():
            try:
                conf.update(json.loads((p / name).read_text()))
            except json.JSONDecodeError:
                return load_tokenizer(p)
    if not (p / "tokenizer.json").is_file():
        return load_tokenizer(p)
    tok = Tokenizer.from_file(str(p / "tokenizer.json"))
    specials = {}
    for name in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"):
        v = conf.get(name)
        v = v.get("content") if isinstance(v, dict) else v
        idx = tok.token_to_id(v) if isinstance(v, str) else None
        if idx is None:
            return load_tokenizer(p)  # let transformers resolve it (or name what is missing)
        specials[name] = idx
    return TokenizerInfo(p, tok, specials)


def special_ids(tok) -> dict[str, int]:
    return {"pad_id": tok.pad_token_id, "unk_id": tok.unk_token_id, "cls_id": tok.cls_token_id,
            "sep_id": tok.sep_token_id, "mask_id": tok.mask_token_id}


def tokenizer_fingerprint(tok) -> str:
    """sha256 of the vocabulary (pieces in id order) and the special ids: equal iff ids mean the same tokens."""
    vocab = tok.get_vocab()
    pieces = [None] * (max(vocab.values()) + 1)
    for piece, idx in vocab.items():
        pieces[idx] = piece
    blob = json.dumps({"pieces": pieces, "specials": special_ids(tok)}, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def vocab_size_of(tok) -> int:
    return max(tok.get_vocab().values()) + 1


_BYTE_PIECES = {"<0x2E>": ".", "<0x21>": "!", "<0x3F>": "?"}  # byte-fallback pieces of sentence-final marks


def sentence_end_table(tok) -> np.ndarray:
    """bool per id: the token ends a sentence (its text ends in . ! ? or such, possibly before a closing quote)."""
    table = np.zeros(vocab_size_of(tok), dtype=bool)
    for piece, idx in tok.get_vocab().items():
        piece = _BYTE_PIECES.get(piece, piece)
        s = piece.rstrip("\"')]}»”’")
        if s and s[-1] in ".!?。！？…" and piece not in SPECIAL_TOKENS.values():
            table[idx] = True
    return table


# ------------------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser) -> None:
    t = parser  # `gpt-ds tokenizer train ...` (one action; a positional keeps intermixed parsing possible)
    t.add_argument("action", choices=["train"], help="train a SentencePiece tokenizer on text files")
    t.add_argument("--input", nargs="+", required=True, help="files, folders or globs (any format `prepare` reads)")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True, help="output folder (a Hugging Face tokenizer folder)")
    t.add_argument("--model", choices=["unigram", "bpe"], default="unigram")
    t.add_argument("--sample-docs", type=int, default=100_000, help="documents sampled (reservoir) from the stream")
    t.add_argument("--text-field", default="text", help="field/column holding the text in jsonl/csv/parquet/datasets")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def run(args) -> int:
    out = train_tokenizer(args.input, args.vocab_size, args.out, model=args.model, sample_docs=args.sample_docs,
                          seed=args.seed, text_field=args.text_field, overwrite=args.overwrite)
    tok = load_tokenizer(out)
    print(json.dumps({"out": str(out), "vocab_size": vocab_size_of(tok), "fingerprint": tokenizer_fingerprint(tok)}))
    return 0
