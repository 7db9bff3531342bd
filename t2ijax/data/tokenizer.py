"""Tokenizers for the data pipeline.

`shapes_word` is a word-level tokenizer over the closed Shapes vocabulary,
built in code (nothing is downloaded): lower-casing, split on whitespace and
punctuation, `[BOS] ... [EOS]` around every caption, `[PAD]` = id 0. Any other
name is a local folder readable by `transformers.AutoTokenizer`.
"""

from __future__ import annotations

import functools

import numpy as np

SHAPES_WORD = "shapes_word"
SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")


def shapes_word_tokenizer(model_max_length: int = 128):
    """The built-in Shapes word-level tokenizer as a `transformers.PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from t2ijax.data.shapes import vocabulary

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]",
        model_max_length=model_max_length,
    )


@functools.lru_cache(maxsize=8)
def _load_tokenizer(name_or_path: str, max_length: int | None):
    if name_or_path == SHAPES_WORD:
        return shapes_word_tokenizer(128 if max_length is None else max_length)
    import os

    if not os.path.isdir(name_or_path):
        from t2ijax.weights.local import not_local_message

        raise FileNotFoundError(f"tokenizer {name_or_path!r} is neither {SHAPES_WORD!r} nor a local folder with a "
                                f"saved tokenizer. " + not_local_message(name_or_path))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    if max_length is not None:
        tokenizer.model_max_length = int(max_length)
    return tokenizer


def load_tokenizer(name_or_path, max_length: int | None = None):
    """The one tokenizer loader: "shapes_word" (the Shapes word-level tokenizer) or a tokenizer saved in a local
    folder (`transformers.AutoTokenizer`, never the network). `max_length` sets ``model_max_length`` (the
    length ``padding="max_length"`` and ``truncation=True`` use), e.g. 128 for ELLA's fixed-length T5 mode or
    77 for CLIP. Loaded tokenizers are cached per (name, max_length)."""
    import os

    return _load_tokenizer(os.fspath(name_or_path), None if max_length is None else int(max_length))


def tokenize(tokenizer, texts, max_length: int, *, return_offsets: bool = False) -> dict:
    """Pad/truncate to `max_length`: {"input_ids", "attention_mask"} as (N, L) int32 numpy arrays.

    With `return_offsets` also "offsets" (N, L, 2): character span of each token (0, 0 for specials/pad).
    """
    enc = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_length,
        return_offsets_mapping=return_offsets, return_tensors="np",
    )
    out = {"input_ids": enc["input_ids"].astype(np.int32), "attention_mask": enc["attention_mask"].astype(np.int32)}
    if return_offsets:
        out["offsets"] = enc["offset_mapping"].astype(np.int32)
    return out


def check_prompts(tokenizer, prompts, max_length: int, *, what: str = "prompt", allow_empty: bool = False) -> list[str]:
    """Check prompts before any compute: one that is not a string, or empty unless `allow_empty` (the
    unconditional input, e.g. the demo's comparison), is an error naming it; returns notes on those the text
    encoder will not read whole: longer than `max_length` tokens (how many are dropped), or mostly unknown to the
    tokenizer's vocabulary (e.g. Chinese for an English word-level vocabulary)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    special = set(getattr(tokenizer, "all_special_ids", ()))
    notes = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or (not prompt.strip() and not allow_empty):
            raise ValueError(f"{what} {i} is empty ({prompt!r}): give text (the empty prompt is the model's "
                             "unconditional input, not a prompt)")
        if not prompt.strip():
            continue
        ids = tokenizer(prompt, truncation=False, verbose=False)["input_ids"]
        if len(ids) > max_length:
            notes.append(f"{what} {i} has {len(ids)} tokens, the text encoder reads {max_length}: its last "
                         f"{len(ids) - max_length} tokens are dropped")
        words = [t for t in ids if t not in special or t == unk]
        unknown = sum(t == unk for t in words) if unk is not None else 0
        if unknown and 2 * unknown >= len(words):
            notes.append(f"{what} {i}: {unknown} of {len(words)} tokens are unknown to the tokenizer (another "
                         "language or alphabet? ERNIE-ViLG's Chinese prompts need a tokenizer that knows them)")
    return notes


def spans_to_token_mask(offsets: np.ndarray, spans) -> np.ndarray:
    """(L,) float32 mask of the tokens that overlap any character span (start, end, ...)."""
    mask = np.zeros(offsets.shape[0], np.float32)
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = ends > starts
    for span in spans:
        s, e = span[0], span[1]
        mask[real & (starts < e) & (ends > s)] = 1.0
    return mask


class CaptionTokenizer:
    """Per-example tokenization for the input pipeline: fixed-length ids, mask and character offsets.

    Fast tokenizers run through a private copy of their Rust backend with padding
    and truncation set (several times cheaper per call than `tokenizer(...)`, same
    output); slow tokenizers fall back to `tokenize`.
    """

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, int(max_length)
        self._backend = None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None and tokenizer.pad_token_id is not None:
            from tokenizers import Tokenizer

            self._backend = Tokenizer.from_str(backend.to_str())
            self._backend.enable_truncation(self.max_length)
            self._backend.enable_padding(length=self.max_length, pad_id=tokenizer.pad_token_id,
                                         pad_token=tokenizer.pad_token)

    def __call__(self, text: str, *, return_offsets: bool = False) -> dict:
        if self._backend is None:
            out = tokenize(self.tokenizer, [text], self.max_length, return_offsets=return_offsets)
            return {k: v[0] for k, v in out.items()}
        enc = self._backend.encode(text)
        out = {"input_ids": np.asarray(enc.ids, np.int32), "attention_mask": np.asarray(enc.attention_mask, np.int32)}
        if return_offsets:
            out["offsets"] = np.asarray(enc.offsets, np.int32).reshape(self.max_length, 2)
        return out
