"""CLIP byte-level BPE tokenizer, equal to open_clip's for MobileCLIP2-S2, without torch.

open_clip.get_tokenizer("MobileCLIP2-S2") is its `SimpleTokenizer` (OpenAI CLIP BPE,
49,408 ids, clean="lower", context 77, no reduction). This module re-implements exactly
that pipeline (ftfy + double html-unescape, whitespace collapse, lower-case, the same
regex, the same merges) on numpy so the serving side (the Triton python-backend model
`clip_tokenizer`, the gateway) needs neither torch nor open_clip. The vocabulary file is
open_clip's `bpe_simple_vocab_16e6.txt.gz`; the export step copies it into
model_repository/clip_tokenizer/1/.

Output rows: [sot, bpe ids..., eot, 0...] as int32. Text longer than the context is
truncated with the end token kept in the last slot, as open_clip does.
"""
from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77
# Longest accepted input (UTF-8 bytes). Only the first 75 tokens survive anyway; the
# limit keeps one request from holding the tokenizer (ftfy is linear but not cheap).
MAX_TEXT_BYTES = 16384
_N_MERGES = 49152 - 256 - 2          # merges used by CLIP (the file has more lines)
_BPE_CACHE_SIZE = 65536


class TokenizerError(ValueError):
    """The caller's text cannot be tokenised (empty, not text, not UTF-8, too long)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message if index is None else f"text[{index}]: {message}")
        self.reason = message
        self.index = index


class VocabularyError(RuntimeError):
    """The vocabulary file is missing or malformed (a deployment bug, not the caller's)."""


def default_vocab_path() -> Path:
    """The vocabulary placed by the export step beside the Triton tokenizer model."""
    return Path(__file__).resolve().parent.parent / "model_repository" / "clip_tokenizer" / "1" / VOCAB_FILE


@lru_cache()
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode map (avoids whitespace/control chars)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _clean(text: str) -> str:
    """open_clip's clean="lower": ftfy, html-unescape twice, collapse whitespace, lower-case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """`tok(["a photo of a cat", ...])` -> int32 [N, context_length]."""

    def __init__(self, vocab_path: Path | str | None = None, context_length: int = CONTEXT_LENGTH,
                 max_text_bytes: int = MAX_TEXT_BYTES):
        import regex

        path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        try:
            lines = gzip.open(path).read().decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise VocabularyError(f"cannot read the CLIP BPE vocabulary {path}: {exc} "
                                  f"(it is written by `python -m export --models mobileclip_text`)") from exc
        merges = [tuple(line.split()) for line in lines[1:_N_MERGES + 1]]
        if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
            raise VocabularyError(f"{path}: expected {_N_MERGES} BPE merges, found a different layout")
        byte_chars = list(_bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.bpe_ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.sot_token_id = self.encoder["<start_of_text>"]
        self.eot_token_id = self.encoder["<end_of_text>"]
        self.vocab_size = len(self.encoder)
        self.context_length = int(context_length)
        self.max_text_bytes = int(max_text_bytes)
        self._byte_encoder = _bytes_to_unicode()
        # Same pattern as open_clip (special tokens first, case-insensitive).
        self._pat = regex.compile(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
                                  regex.IGNORECASE)
        self._bpe = lru_cache(maxsize=_BPE_CACHE_SIZE)(self._bpe_uncached)

    # ------------------------------------------------------------------ one word
    def _bpe_uncached(self, token: str) -> tuple[int, ...]:
        """Byte-encoded word -> its BPE ids (merge the lowest-ranked pair until none apply)."""
        if token in ("<start_of_text>", "<end_of_text>"):
            return (self.encoder[token],)
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        ranks = self.bpe_ranks
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return tuple(self.encoder[w] for w in word)

    # ------------------------------------------------------------------ one text
    def _as_text(self, item, index: int | None) -> str:
        if isinstance(item, np.ndarray) and item.shape == ():
            item = item.item()
        if isinstance(item, (bytes, bytearray, memoryview)):
            raw = bytes(item)
            if len(raw) > self.max_text_bytes:
                raise TokenizerError(f"text is {len(raw)} bytes, more than the limit {self.max_text_bytes}", index)
            try:
                item = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TokenizerError(f"text is not valid UTF-8 ({exc.reason} at byte {exc.start})", index) from exc
        if not isinstance(item, str):
            raise TokenizerError(f"expected a string, got {type(item).__name__}", index)
        try:
            n_bytes = len(item.encode("utf-8"))
        except UnicodeEncodeError as exc:   # lone surrogates from a Python caller
            raise TokenizerError(f"text cannot be encoded as UTF-8 ({exc.reason} at {exc.start})", index) from exc
        if n_bytes > self.max_text_bytes:
            raise TokenizerError(f"text is {n_bytes} UTF-8 bytes, more than the limit {self.max_text_bytes}", index)
        if not item.strip():
            raise TokenizerError("text is empty", index)
        return item

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """BPE ids of `text` without start/end tokens (at most `limit` of them)."""
        ids: list[int] = []
        enc = self._byte_encoder
        for m in self._pat.finditer(_clean(text)):
            word = "".join(enc[b] for b in m.group().encode("utf-8"))
            ids.extend(self._bpe(word))
            if limit is not None and len(ids) >= limit:
                return ids[:limit]
        return ids

    # ------------------------------------------------------------------ batches
    def tokenize_checked(self, texts: Sequence) -> tuple[np.ndarray, list[TokenizerError | None]]:
        """Tokenise what can be; bad items get a zero row and their error (for per-request replies)."""
        n = len(texts)
        out = np.zeros((n, self.context_length), dtype=np.int32)
        errors: list[TokenizerError | None] = [None] * n
        keep = self.context_length - 2           # room for start and end tokens
        for i, item in enumerate(texts):
            try:
                text = self._as_text(item, i)
            except TokenizerError as exc:
                errors[i] = exc
                continue
            ids = self.encode(text, limit=keep)
            row = out[i]
            row[0] = self.sot_token_id
            row[1:1 + len(ids)] = ids
            row[1 + len(ids)] = self.eot_token_id
        return out, errors

    def __call__(self, texts: Sequence | str) -> np.ndarray:
        """list of str/bytes -> int32 [N, context_length]; raises TokenizerError on the first bad item."""
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        if len(texts) == 0:
            raise TokenizerError("no texts given")
        tokens, errors = self.tokenize_checked(texts)
        bad = next((e for e in errors if e is not None), None)
        if bad is not None:
            raise bad
        return tokens
