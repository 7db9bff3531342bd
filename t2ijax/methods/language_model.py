"""Language models of caption text, trained by the one loop: a Llama-style decoder (next-token prediction) or a
T5-style encoder-decoder (span corruption), e.g. on the Shapes captions (`configs/lm_shapes.py`).

``config.method = "language_model"``; ``config.model.objective`` picks the model and its loss:

  "causal"  `LlamaForCausalLM` (t2ijax's `LlamaModel` + an untied ``lm_head``): the mean negative
            log-likelihood of every token after the first ([BOS]) up to and including [EOS]; padding
            (attention_mask 0) is neither attended to nor predicted.
  "span"    `T5ForConditionalGeneration` (`t2ijax.models.text.t5_decoder`): T5's denoising objective
            (Raffel et al. 2020, `span_corruption`): noise density 0.15 and mean noise-span length 3 by
            default; each noise span of the encoder input is replaced by one sentinel, the decoder predicts
            "<sentinel_0> span_0 <sentinel_1> span_1 ... [EOS]"; the loss is the mean NLL of those targets.

Captions: every batch carries several caption kinds (``model.captions``, names of ``data.caption`` and of
``data.extra_captions``, each tokenized at its own length), and the loss is the token-weighted mean over all of
them; ``nll_<name>`` / ``tokens_<name>`` are logged per kind.

Vocabulary: the data tokenizer's (``data.tokenizer``, e.g. "shapes_word": [PAD] 0, [BOS] 1, [EOS] 2, [UNK] 3,
then the words). The span objective needs sentinels, which shapes_word lacks: the model's vocabulary is the
tokenizer's plus ``model.num_sentinels`` ids on top, ``<extra_id_k>`` = vocab_size - 1 - k as in T5 (extra_id_0
the largest id); the export's tokenizer has them as added special tokens at exactly those ids. Special tokens
are never corrupted ([BOS], [EOS], [PAD]); the decoder starts from [PAD] (T5's decoder_start_token_id).

config.model:
  objective          "causal" | "span"
  llama              LlamaConfig fields (objective "causal"); vocab_size 0 = the tokenizer's size,
                     max_position_embeddings 0 = the longest caption length
  t5                 T5Config fields + num_decoder_layers (objective "span"); vocab_size 0 = tokenizer + sentinels
  captions           caption names in each batch (default: data.caption and every data.extra_captions name)
  noise_density      span corruption: fraction of a caption's tokens corrupted (0.15)
  mean_span_length   span corruption: mean noise-span length (3.0)
  num_sentinels      sentinel ids added on top of the tokenizer (16)
  pack_captions      False: one forward per caption kind at its own length (no padding waste); True: one
                     forward over all kinds padded to the longest (the same loss up to rounding, one compiled
                     graph instead of one per kind: the tiny variants, for fast compiles in tests)

Features (what a frozen text encoder gives; `features`): Llama: the last hidden state after the final norm;
T5: the encoder's last hidden state. Both are exactly what `t2ijax.weights.load_text_encoder` of the export
gives (tested).

Export (``t2ijax convert``): ``<out>/llama`` (a `LlamaForCausalLM` folder: ``model.*`` + ``lm_head.weight``)
or ``<out>/t5`` (a `T5ForConditionalGeneration` folder), each with config.json, model.safetensors and the
tokenizer; `load_text_encoder` reads either as a text encoder (it drops the LM head / the decoder).
"""

from __future__ import annotations

import copy
import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.methods.common import MethodHooks, as_dict, field
from t2ijax.models.layers import Dense
from t2ijax.models.text.llama import LlamaConfig, LlamaModel
from t2ijax.models.text.t5 import T5Config
from t2ijax.models.text.t5_decoder import T5ForConditionalGeneration, hf_seq2seq_config, t5_reference_init

OBJECTIVES = ("causal", "span")
EXPORT_SUBDIR = {"causal": "llama", "span": "t5"}


# ------------------------------------------------------------------------------------------- the models

class LlamaForCausalLM(nn.Module):
    """`LlamaModel` (``model``) + ``lm_head``: Hugging Face's LlamaForCausalLM names; logits in float32."""
    config: LlamaConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.model = LlamaModel(self.config, self.dtype)
        self.lm_head = Dense(self.config.vocab_size, ("embed", "vocab"), use_bias=False, dtype=self.dtype)

    def hidden(self, input_ids, attention_mask=None):
        return self.model(input_ids, attention_mask)

    def __call__(self, input_ids, attention_mask=None):
        return self.lm_head(self.model(input_ids, attention_mask)).astype(jnp.float32)


# ------------------------------------------------------------------------------------------- the losses

def token_nll(logits, targets):
    """(B, L) negative log-likelihood of `targets` under `logits` (B, L, V), float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def causal_lm_nll(logits, input_ids, attention_mask):
    """(summed NLL, number of predicted tokens): token t+1 from positions <= t, only where the mask is 1."""
    nll = token_nll(logits[:, :-1], input_ids[:, 1:])
    weight = attention_mask[:, 1:].astype(jnp.float32)
    return jnp.sum(nll * weight), jnp.sum(weight)


def span_target_length(max_length: int, noise_density: float = 0.15, mean_span_length: float = 3.0) -> int:
    """Static length that holds every span-corruption target of a sequence of at most `max_length` tokens."""
    noise = int(round(max_length * noise_density))
    spans = max(1, int(round(noise / mean_span_length)))
    return noise + spans + 1


def max_noise_spans(max_length: int, noise_density: float = 0.15, mean_span_length: float = 3.0) -> int:
    return max(1, int(round(int(round(max_length * noise_density)) / mean_span_length)))


def _segment_lengths(key, num_items, num_segments, size: int):
    """(size,) lengths of a uniformly random split of `num_items` items into `num_segments` non-empty
    segments (T5's `_random_segmentation`): num_segments - 1 distinct cuts among the num_items - 1 gaps."""
    j = jnp.arange(size)
    valid = (j >= 1) & (j < num_items)
    score = jnp.where(valid, jax.random.uniform(key, (size,)), 2.0)
    order = jnp.argsort(score)
    cut = valid & jnp.zeros((size,), bool).at[order].set(j < num_segments - 1)  # the num_segments - 1 lowest
    segment = jnp.cumsum(cut)
    return jnp.zeros((size,), jnp.int32).at[segment].add((j < num_items).astype(jnp.int32))


def _corrupt_one(key, ids, mask, sentinels, special_ids, eos_id, pad_id, noise_density, mean_span_length,
                 target_length):
    size = ids.shape[0]
    content = mask.astype(bool) & ~jnp.isin(ids, special_ids)
    n = jnp.sum(content).astype(jnp.int32)
    num_noise = jnp.round(n * noise_density).astype(jnp.int32)
    num_noise = jnp.clip(num_noise, jnp.minimum(1, n - 1), jnp.maximum(n - 1, 0))
    num_spans = jnp.maximum(1, jnp.round(num_noise / mean_span_length).astype(jnp.int32))
    num_spans = jnp.minimum(num_spans, jnp.minimum(num_noise, n - num_noise))
    num_spans = jnp.minimum(num_spans, sentinels.shape[0])
    k_noise, k_keep = jax.random.split(key)
    noise_len = _segment_lengths(k_noise, num_noise, num_spans, size)
    keep_len = _segment_lengths(k_keep, n - num_noise, num_spans, size)
    # spans alternate kept, noise, kept, noise, ... (T5: the sequence starts with kept tokens, ends with noise)
    ends = jnp.cumsum(jnp.stack([keep_len, noise_len], axis=1).reshape(-1))
    cidx = jnp.cumsum(content) - 1  # index among the content tokens
    span = jnp.searchsorted(ends, jnp.clip(cidx, 0), side="right", method="compare_all")
    noise = content & (span % 2 == 1) & (num_spans > 0)
    span_id = span // 2
    first = noise & ~jnp.concatenate([jnp.zeros((1,), bool), noise[:-1]])
    sentinel = sentinels[jnp.clip(span_id, 0, sentinels.shape[0] - 1)]
    # encoder input: each noise span -> its sentinel; compacted to the left, padded with pad_id
    keep = mask.astype(bool) & (~noise | first)
    dest = jnp.where(keep, jnp.cumsum(keep) - 1, size)
    inputs = jnp.full((size,), pad_id, ids.dtype).at[dest].set(jnp.where(first, sentinel, ids).astype(ids.dtype),
                                                               mode="drop")
    input_mask = (jnp.arange(size) < jnp.sum(keep)).astype(jnp.int32)
    # targets: <sentinel_i> span_i ... [EOS]
    emit = noise.astype(jnp.int32) + first.astype(jnp.int32)
    pos = jnp.cumsum(emit) - 1
    labels = jnp.full((target_length,), pad_id, ids.dtype)
    labels = labels.at[jnp.where(noise, pos, target_length)].set(ids, mode="drop")
    labels = labels.at[jnp.where(first, pos - 1, target_length)].set(sentinel.astype(ids.dtype), mode="drop")
    total = jnp.sum(emit)
    labels = labels.at[total].set(jnp.asarray(eos_id, ids.dtype), mode="drop")
    label_mask = (jnp.arange(target_length) <= total).astype(jnp.int32)
    return {"input_ids": inputs, "attention_mask": input_mask, "labels": labels, "labels_mask": label_mask,
            "noise_mask": noise.astype(jnp.int32), "content_mask": content.astype(jnp.int32)}


def span_corruption(key, input_ids, attention_mask, *, sentinel_ids, special_ids, eos_id: int, pad_id: int = 0,
                    noise_density: float = 0.15, mean_span_length: float = 3.0, target_length: int | None = None):
    """T5's span corruption of a batch of right-padded token ids, jittable, deterministic in `key`.

    Per row: the n content tokens (attention_mask 1, not in `special_ids`) get round(n * noise_density) noise
    tokens (at least 1, at most n - 1) in round(noise / mean_span_length) spans (at least 1), span lengths
    drawn as T5's `random_spans_noise_mask` (kept and noise spans alternate, starting with a kept one). Returns
    {"input_ids", "attention_mask"} (B, L): each noise span replaced by ``sentinel_ids[i]`` for the i-th span,
    the rest (specials included) kept in order; {"labels", "labels_mask"} (B, T): ``sentinel_i span_i`` for
    every span, then `eos_id`, padded with `pad_id`; "noise_mask" and "content_mask" (B, L) on the original
    positions. T defaults to `span_target_length(L, ...)`.
    """
    b, length = input_ids.shape
    target_length = target_length or span_target_length(length, noise_density, mean_span_length)
    keys = jax.random.split(key, b)
    fn = lambda k, i, m: _corrupt_one(k, i, m, jnp.asarray(sentinel_ids, jnp.int32),  # noqa: E731
                                      jnp.asarray(special_ids, jnp.int32), eos_id, pad_id, noise_density,
                                      mean_span_length, target_length)
    return jax.vmap(fn)(keys, input_ids.astype(jnp.int32), attention_mask.astype(jnp.int32))


def shift_right(labels, start_id: int = 0):
    """Decoder inputs: `start_id`, then the labels without their last entry."""
    return jnp.concatenate([jnp.full((labels.shape[0], 1), start_id, labels.dtype), labels[:, :-1]], axis=1)


# ------------------------------------------------------------------------------------------- the method

def _fields(cls, values: dict, where: str, extra=()) -> dict:
    known = {f.name for f in dataclasses.fields(cls)} | set(extra)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config.{where} has fields {unknown} that {cls.__name__} lacks ({sorted(known)})")
    return values


class LanguageModelMethod(MethodHooks):
    """Method interface (t2ijax.train.method); trainable params: the LM's ``variables["params"]``."""

    def __init__(self, config):
        from t2ijax.data.tokenizer import load_tokenizer

        m, data = config.model, config.data
        self.objective = str(field(m, "objective", "causal"))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"model.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        self.dtype = jnp.dtype(config.compute_dtype)
        self.tokenizer = load_tokenizer(data.tokenizer, int(data.max_length))
        tok = self.tokenizer
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        if tok.eos_token_id is None:
            raise ValueError("the language models need a tokenizer with an eos_token")
        self.eos_id = int(tok.eos_token_id)
        self.special_ids = sorted({int(i) for i in (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
                                   if i is not None})
        self.captions = self._captions(config)  # [(name, batch field prefix, max_length)]
        self.max_length = max(length for _, _, length in self.captions)
        self.noise_density = float(field(m, "noise_density", 0.15))
        self.mean_span_length = float(field(m, "mean_span_length", 3.0))
        self.pack = bool(field(m, "pack_captions", False))
        self.num_sentinels = int(field(m, "num_sentinels", 16)) if self.objective == "span" else 0
        base = len(tok)
        if self.objective == "causal":
            fields = _fields(LlamaConfig, as_dict(m.llama), "model.llama")
            fields["vocab_size"] = int(fields.get("vocab_size", 0)) or base
            fields["max_position_embeddings"] = int(fields.get("max_position_embeddings", 0)) or self.max_length
            if fields["vocab_size"] < base:
                raise ValueError(f"model.llama.vocab_size={fields['vocab_size']} < the tokenizer's {base}")
            self.lm_config = LlamaConfig(**fields)
            self.model = LlamaForCausalLM(self.lm_config, self.dtype)
            self.vocab_size = self.lm_config.vocab_size
        else:
            if not 0.0 < self.noise_density < 1.0 or self.mean_span_length < 1.0:
                raise ValueError(f"span corruption needs 0 < noise_density < 1 and mean_span_length >= 1, got "
                                 f"{self.noise_density}, {self.mean_span_length}")
            need = max_noise_spans(self.max_length, self.noise_density, self.mean_span_length)
            if self.num_sentinels < need:
                raise ValueError(f"model.num_sentinels={self.num_sentinels}: captions of {self.max_length} tokens "
                                 f"can have {need} noise spans")
            fields = _fields(T5Config, as_dict(m.t5), "model.t5", extra=("num_decoder_layers",))
            self.num_decoder_layers = int(fields.pop("num_decoder_layers", 0)) or int(fields["num_layers"])
            fields["vocab_size"] = int(fields.get("vocab_size", 0)) or base + self.num_sentinels
            if fields["vocab_size"] < base + self.num_sentinels:
                raise ValueError(f"model.t5.vocab_size={fields['vocab_size']} < tokenizer ({base}) + sentinels "
                                 f"({self.num_sentinels})")
            self.lm_config = T5Config(**fields)
            self.model = T5ForConditionalGeneration(self.lm_config, self.num_decoder_layers, dtype=self.dtype)
            self.vocab_size = self.lm_config.vocab_size
        # <extra_id_k> = vocab_size - 1 - k (T5's layout: the sentinels at the top of the vocabulary)
        self.sentinel_ids = np.asarray([self.vocab_size - 1 - k for k in range(self.num_sentinels)], np.int32)

    @staticmethod
    def _captions(config) -> list[tuple[str, str, int]]:
        from t2ijax.data.pipeline import extra_captions

        data = config.data
        extras = extra_captions(data) if dict(data.get("extra_captions", {}) or {}) else {}
        names = list(field(config.model, "captions", None) or [str(data.caption), *extras])
        out = []
        for name in names:
            if name in extras:
                _, tok, length = extras[name]
                if tok != data.tokenizer:
                    raise ValueError(f"data.extra_captions[{name!r}] must use data.tokenizer ({data.tokenizer!r})")
                out.append((name, f"{name}_", int(length)))
            elif name == data.caption:
                out.append((name, "", int(data.max_length)))
            else:
                raise ValueError(f"model.captions names {name!r}: not data.caption ({data.caption!r}) nor a "
                                 f"data.extra_captions name ({sorted(extras)})")
        if not out:
            raise ValueError("model.captions is empty")
        return out

    # ---------------------------------------------------------------- training

    def init(self, rng, config):
        ids = jnp.zeros((1, 8), jnp.int32)
        if self.objective == "causal":
            return self.model.init(rng, ids, jnp.ones_like(ids))["params"]
        params = self.model.init(rng, ids, jnp.ones_like(ids), ids, jnp.ones_like(ids))["params"]
        return t5_reference_init(params, self.lm_config)

    def corrupt(self, key, input_ids, attention_mask):
        """`span_corruption` with this method's sentinels, special ids and rates."""
        return span_corruption(key, input_ids, attention_mask, sentinel_ids=self.sentinel_ids,
                               special_ids=self.special_ids, eos_id=self.eos_id, pad_id=self.pad_id,
                               noise_density=self.noise_density, mean_span_length=self.mean_span_length)

    def row_nll(self, params, input_ids, attention_mask, rng=None):
        """(N,) summed NLL and (N,) number of scored tokens per caption: next tokens (causal) or the span
        corruption targets drawn with `rng` (span)."""
        if self.objective == "causal":
            logits = self.model.apply({"params": params}, input_ids, attention_mask)
            weight = attention_mask[:, 1:].astype(jnp.float32)
            return jnp.sum(token_nll(logits[:, :-1], input_ids[:, 1:]) * weight, axis=1), jnp.sum(weight, axis=1)
        return self.denoising_row_nll(params, self.corrupt(rng, input_ids, attention_mask))

    def nll(self, params, input_ids, attention_mask, rng=None):
        """(summed NLL, number of scored tokens) of one caption batch (see `row_nll`)."""
        s, n = self.row_nll(params, input_ids, attention_mask, rng)
        return jnp.sum(s), jnp.sum(n)

    def denoising_row_nll(self, params, c):
        """Per caption (summed NLL, number of target tokens) of the decoder's targets for a `span_corruption`
        output `c`."""
        logits = self.model.apply({"params": params}, c["input_ids"], c["attention_mask"],
                                  shift_right(c["labels"], self.pad_id), c["labels_mask"])
        weight = c["labels_mask"].astype(jnp.float32)
        return jnp.sum(token_nll(logits, c["labels"]) * weight, axis=1), jnp.sum(weight, axis=1)

    def loss(self, params, frozen, batch, rng):
        fields = [(batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]) for _, prefix, _ in self.captions]
        sizes = [ids.shape[0] for ids, _ in fields]
        pad = lambda a: jnp.pad(a, ((0, 0), (0, self.max_length - a.shape[1])))  # noqa: E731
        if self.pack:  # one forward over every kind, padded to the longest (one compiled graph)
            ids, mask = jnp.concatenate([pad(i) for i, _ in fields]), jnp.concatenate([pad(m) for _, m in fields])
            s, n = self.row_nll(params, ids, mask, rng)
            bounds = np.cumsum([0, *sizes])
            sums = [(jnp.sum(s[a:b]), jnp.sum(n[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
        elif self.objective == "causal":
            sums = [self.nll(params, ids, mask) for ids, mask in fields]
        else:
            # one corruption of every kind (padded to the longest; the same draw as with `pack`), then each kind at
            # its own length again: the corrupted input is never longer than the caption, and the targets fit
            # span_target_length(length)
            c = self.corrupt(rng, jnp.concatenate([pad(i) for i, _ in fields]),
                             jnp.concatenate([pad(m) for _, m in fields]))
            sums, start = [], 0
            for b, (_, _, length) in zip(sizes, self.captions):
                t = span_target_length(length, self.noise_density, self.mean_span_length)
                part = {"input_ids": c["input_ids"][start:start + b, :length],
                        "attention_mask": c["attention_mask"][start:start + b, :length],
                        "labels": c["labels"][start:start + b, :t],
                        "labels_mask": c["labels_mask"][start:start + b, :t]}
                s, n = self.denoising_row_nll(params, part)
                sums.append((jnp.sum(s), jnp.sum(n)))
                start += b
        total, count, metrics = 0.0, 0.0, {}
        for (name, _, _), (s, n) in zip(self.captions, sums):
            total, count = total + s, count + n
            metrics[f"nll_{name}"] = s / jnp.maximum(n, 1.0)
            metrics[f"tokens_{name}"] = n
        return total / jnp.maximum(count, 1.0), metrics

    # ---------------------------------------------------------------- features

    def features(self, params, input_ids, attention_mask):
        """(B, L, D) last hidden state: Llama after the final norm, T5 the encoder's (= the export's
        `load_text_encoder` output)."""
        if self.objective == "causal":
            return self.model.apply({"params": params}, input_ids, attention_mask, method="hidden")
        return self.model.apply({"params": params}, input_ids, attention_mask, method="encode_states")

    # ---------------------------------------------------------------- export

    def export_tokenizer(self):
        """The data tokenizer, plus ``<extra_id_k>`` special tokens at ids vocab_size - 1 - k for the span LM."""
        tok = copy.deepcopy(self.tokenizer)
        if self.num_sentinels:
            from tokenizers import AddedToken

            base = len(tok)
            if base + self.num_sentinels != self.vocab_size:
                raise ValueError(f"the export tokenizer puts the sentinels at {base}..{base + self.num_sentinels - 1}"
                                 f" but the model's are at the top of a vocabulary of {self.vocab_size}")
            names = [f"<extra_id_{k}>" for k in reversed(range(self.num_sentinels))]
            tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in names], special_tokens=True)
            got = tok.convert_tokens_to_ids([f"<extra_id_{k}>" for k in range(self.num_sentinels)])
            if list(got) != self.sentinel_ids.tolist():
                raise ValueError(f"sentinel ids {got} != {self.sentinel_ids.tolist()}")
        return tok

    def export(self, params, out_dir: str) -> list[str]:
        """``<out_dir>/llama`` (LlamaForCausalLM) or ``<out_dir>/t5`` (T5ForConditionalGeneration): config.json,
        model.safetensors and the tokenizer, readable by `t2ijax.weights.load_text_encoder`."""
        from t2ijax.weights.torch_layout import params_to_state_dict, write_config, write_weights

        host = jax.tree.map(np.asarray, jax.device_get(nn.meta.unbox(params)))
        folder = os.path.join(out_dir, EXPORT_SUBDIR[self.objective])
        tok = self.tokenizer
        ids = {"pad_token_id": self.pad_id, "eos_token_id": self.eos_id}
        if self.objective == "causal":
            cfg = self.lm_config.to_hf()
            cfg.update(architectures=["LlamaForCausalLM"], bos_token_id=tok.bos_token_id, **ids)
        else:
            cfg = hf_seq2seq_config(self.lm_config, self.num_decoder_layers, pad_token_id=self.pad_id,
                                    eos_token_id=self.eos_id, decoder_start_token_id=self.pad_id)
        dtype_name = np.dtype(jax.tree_util.tree_leaves(host)[0].dtype).name
        cfg.update(dtype=dtype_name, torch_dtype=dtype_name)
        write_weights(params_to_state_dict(host), folder, "model")
        write_config(cfg, folder)
        self.export_tokenizer().save_pretrained(folder)
        return [folder]


def make_method(config) -> LanguageModelMethod:
    return LanguageModelMethod(config)
