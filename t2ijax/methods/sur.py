"""SUR-adapter training (Zhong et al., ACM MM 2023, arXiv 2305.05189; methods notes §3): only the adapter learns.

A frozen CLIP text encoder reads the SIMPLE (narrative) prompt, the adapter (`t2ijax.models.sur_adapter`)
rewrites its last hidden states, and a frozen U-Net (optionally in a frozen VAE's latent space) denoises
with them. Three terms train the adapter:

  loss = mse + w_llm * KD(LLMResize(v_llm), encoder_out) + w_prompt * KD(CLIP(complex prompt), adapter_out)

* mse: the U-Net's denoising loss (its prediction type and schedule) conditioned on the adapted states;
* the LLM term: v_llm = a frozen LLM's hidden states of the simple prompt at `model.llm_layer`, mean-pooled
  over the prompt's tokens, through a fixed random projection `LLMResize` drawn from
  `model.llm_projection_seed` (Q4: the release never seeded nor saved it; here it is recomputed from the seed
  on every start, so a resume is exact, and `t2ijax convert` writes it beside the adapter);
* the prompt term: the frozen CLIP states of the COMPLEX (keyword / dense) prompt of the same image.

Data: the simple prompt is the main caption (`data.caption`, "narrative" on Shapes; SURD's `text`), the
complex prompt the extra caption named "complex" (`data.extra_captions.complex = "dense"`: Shapes' dense
caption, SURD's `prompt`). The LLM reads the simple prompt either from the feature cache
`model.llm_feature_cache` (built by ``t2ijax prepare``: one mean-pooled vector per train row, so training
never runs the LLM) or on the fly from the extra caption "llm" (`"narrative:<llm tokenizer folder>:<length>"`).

Switches for the released code's quirks (paper intent by default; `model.reproduce_release=True` sets every
one to the release, and each can then be overridden on its own):
  denoise_gradient  (Q3) True: the denoising MSE trains the adapter (the paper's stated role of the noise
                    loss). False: the release's `torch.tensor(...)` re-wrap detaches the adapted states, so
                    only the KD terms train it.
  kd                (Q6) "standard": the adapter is the student, the LLM vector and the complex-prompt states
                    are detached teachers. "release": the release's argument order, the adapter's tensors in
                    the KL-target slot, not detached (`t2ijax.methods.sur_losses.sur_distillation_losses`).
  sur.attend_across_batch / sur.dropout_at_inference (Q1, Q2): adapter fields (see the module). With
                    attend_across_batch the sampler adapts the concatenated [uncond; cond] states in one call,
                    as the release's pipeline does.
  adapt_uncond      True (release): the CFG unconditional states CLIP("") go through the adapter too;
                    False feeds them to the U-Net as they are.
Dead parameters (Q5, `sur.dead_params`) never change: the optimiser leaves them out (PyTorch's AdamW skips
parameters without a gradient), weight decay included.

config.model:
  unet_path / unet, vae_path / vae   the frozen denoiser (`common.frozen_denoiser`), as ELLA's
  text_encoder_path / text           the frozen CLIP text encoder: a Hugging Face CLIP text folder (or a folder
                                     holding text_encoder/), or CLIPTextConfig fields of a random one (smoke)
  llm_path / llm, llm_layer          the frozen LLM (Llama architecture; a Hugging Face folder, or LlamaConfig
                                     fields); llm_layer: the 0-based transformer block whose output is read,
                                     before the final norm for the last block (-1 = the last; run.sh: 39 of 40)
  llm_feature_cache                  optional cache of the pooled LLM vectors of the train split (row order)
  llm_projection_seed                seed of the fixed LLMResize projection
  sur                                SURAdapter fields (width = the CLIP width; eta 0.1 as run.sh)
  loss_weights                       {"llm": w_llm, "prompt": w_prompt}; run.sh: 1e-5 each; w = 0 drops a term
                                     (w_llm = 0: no LLM is needed at all)
  kd_temperature                     T of both KD terms (1 in the release)
  reproduce_release, denoise_gradient, kd, adapt_uncond   see above
  caption_dropout                    probability of training on CLIP("") (default 0: the release has none)
  prediction_type, schedule, frozen_seed   as the frozen U-Net was trained
config.init_from: a released (or exported) adapter .safetensors to start from; `t2ijax sample --random_init`
with it samples with that adapter and no workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.methods.common import (
    DiffusionMethod,
    WithCachedFeatures,
    as_dict,
    field,
    frozen_denoiser,
    frozen_text_encoder,
    text_width,
    training_captions,
    vae_decode,
    vae_encode,
)
from t2ijax.methods.sur_losses import apply_llm_projection, llm_projection, sur_distillation_losses
from t2ijax.models.sur_adapter import SURAdapter, trainable_mask

KD_MODES = ("standard", "release")
RELEASE_ADAPTER = {"attend_across_batch": True, "dropout_at_inference": True}


def _flag(value, default: bool, name: str) -> bool:
    """A switch given as a bool or its command-line text; None (unset, "") = `default`."""
    if value is None:
        return default
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name}={value!r}: use true or false (or leave it empty)")
        return value.lower() in ("true", "1")
    return bool(value)


class SURMethod(DiffusionMethod):
    """Method interface (t2ijax.train.method): trainable params = the adapter; frozen CLIP, U-Net, VAE, LLM."""

    trainable_item = "adapter"

    def __init__(self, config):
        super().__init__(config)
        m = config.model
        self.caption_dropout = float(field(m, "caption_dropout", 0.0))
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"model.caption_dropout must be in [0, 1], got {self.caption_dropout}")
        release = bool(field(m, "reproduce_release", False))
        self.denoise_gradient = _flag(field(m, "denoise_gradient"), not release, "model.denoise_gradient")
        self.kd = str(field(m, "kd", "release" if release else "standard"))
        if self.kd not in KD_MODES:
            raise ValueError(f"model.kd must be one of {KD_MODES}, got {self.kd!r}")
        self.adapt_uncond = bool(m.get("adapt_uncond", True))
        weights = as_dict(field(m, "loss_weights", {}))
        unknown = sorted(set(weights) - {"llm", "prompt"})
        if unknown:
            raise ValueError(f"model.loss_weights has unknown terms {unknown}; use 'llm' and 'prompt'")
        self.w_llm, self.w_prompt = float(weights.get("llm", 1e-5)), float(weights.get("prompt", 1e-5))
        if min(self.w_llm, self.w_prompt) < 0:
            raise ValueError(f"model.loss_weights must be >= 0, got {weights}")
        self.temperature = float(field(m, "kd_temperature", 1.0))
        self.frozen_seed = int(field(m, "frozen_seed", 0))
        self.projection_seed = int(field(m, "llm_projection_seed", 0))
        self.data_config = config.data
        self._check_captions(config.data)
        self._clip = frozen_text_encoder(field(m, "text_encoder_path"), field(m, "text"), "clip", self.dtype,
                                         vocab_size=len(self.tokenizer), max_length=self.max_length,
                                         kinds=("clip",), what="SUR CLIP text encoder")
        self.clip = self._clip.module
        self._frozen_unet, self._frozen_vae, self.sample_size = frozen_denoiser(m, self.dtype, self.resolution,
                                                                                "SUR-adapter")
        self.unet = self._frozen_unet.module
        self.vae = self._frozen_vae.module if self._frozen_vae is not None else None
        width = text_width(self.clip)
        if self.unet.cross_attention_dim != width:
            raise ValueError(f"the U-Net's cross_attention_dim {self.unet.cross_attention_dim} must equal the CLIP "
                             f"width {width}")
        self.adapter = self._build_adapter(as_dict(field(m, "sur", {})), width, release)
        self.llm_cache = field(m, "llm_feature_cache")
        self.llm_layer = int(field(m, "llm_layer", -1))
        self._model_config, self._wants_llm = m, self.w_llm > 0
        if self._wants_llm and self.llm_caption is None and not self.llm_cache:
            raise ValueError("the LLM term (model.loss_weights.llm > 0) needs the simple prompt in the LLM's "
                             "tokenization: data.extra_captions.llm = '<caption kind>:<llm tokenizer>:<length>', or a "
                             "model.llm_feature_cache")
        path = field(m, "llm_path")
        if not path or os.path.isdir(os.path.expanduser(path)):
            self._llm  # noqa: B018 -- here: checked at construction; elsewhere (e.g. sampling on another machine): lazily
        self.clip_sample = bool(config.sample.get("clip_sample", self.vae is None))

    # ---------------------------------------------------------------- set-up

    def _check_captions(self, data):
        from t2ijax.data.pipeline import extra_captions

        extra = extra_captions(data)
        if "complex" not in extra:
            raise ValueError("SUR-adapter needs the complex prompt as data.extra_captions.complex (e.g. 'dense': "
                             "Shapes' dense caption, an image folder's 'prompt' field)")
        kind, tok, length = extra["complex"]
        if tok != data.tokenizer or length != self.max_length:
            raise ValueError("data.extra_captions.complex must use the CLIP tokenizer and data.max_length (the "
                             f"frozen CLIP reads it): got tokenizer {tok!r}, length {length}")
        self.llm_caption = extra.get("llm")
        if self.llm_caption is not None and self.llm_caption[0] != data.caption:
            raise ValueError(f"data.extra_captions.llm reads {self.llm_caption[0]!r} captions; the LLM must read the "
                             f"simple prompt, data.caption={data.caption!r}")

    def _build_adapter(self, fields, width, release):
        if release:
            fields = {**RELEASE_ADAPTER, **fields}
        fields.setdefault("width", width)
        try:
            adapter = SURAdapter(**fields, dtype=self.dtype)
        except TypeError as e:
            raise ValueError(f"model.sur has a field SURAdapter lacks: {e}") from None
        adapter.check_config()
        if adapter.width != width:
            raise ValueError(f"model.sur.width={adapter.width} must equal the CLIP width {width}")
        return adapter

    @functools.cached_property
    def _llm(self):
        """The frozen LLM, built when first needed (training without a cache, `prepare`, LLMResize's width):
        sampling and export from a trained adapter never need its folder."""
        from t2ijax.data.tokenizer import load_tokenizer

        m = self._model_config
        if not self._wants_llm or (self.llm_cache and not field(m, "llm_path") and not field(m, "llm")):
            return None  # no LLM term, or the cache alone (prepare needs the LLM: it says so)
        _, tok, length = self.llm_caption or (None, self.data_config.tokenizer, self.max_length)
        self.llm_tokenizer, self.llm_length = load_tokenizer(tok, length), length
        llm = frozen_text_encoder(field(m, "llm_path"), field(m, "llm"), "llama", self.dtype,
                                  vocab_size=len(self.llm_tokenizer), max_length=length, kinds=("llama",),
                                  what="SUR LLM")
        layers = llm.module.config.num_hidden_layers
        if not -layers <= self.llm_layer < layers:
            raise ValueError(f"model.llm_layer={self.llm_layer}: the LLM has {layers} blocks")
        return llm

    @property
    def llm_size(self) -> int:
        if self._llm is not None:
            return text_width(self._llm.module)
        if self.llm_cache:
            from t2ijax.data.feature_cache import FeatureCache

            return int(FeatureCache(os.path.expanduser(self.llm_cache)).metadata["fields"]["llm_vector"]["shape"][0])
        raise ValueError("no LLM configured (model.loss_weights.llm is 0)")

    # ---------------------------------------------------------------- frozen

    def frozen(self, config, shard_config=None, training: bool = True):
        """{"unet", "text_encoder", ["vae"], ["llm"], ["llm_projection"], "empty_states"}; the LLM and its
        projection only for training (the adapter needs no LLM at inference)."""
        rng = np.random.default_rng(self.frozen_seed)  # one stream: U-Net, CLIP, VAE, LLM in that order
        out = {"unet": self._frozen_unet.params(rng, shard_config),
               "text_encoder": self._clip.params(rng, shard_config)}
        if self._frozen_vae is not None:
            out["vae"] = self._frozen_vae.params(rng, shard_config)
        if training and self._llm is not None and not self.llm_cache:
            out["llm"] = self._llm.params(rng, shard_config)
        if training and self.w_llm > 0:
            out["llm_projection"] = self.projection()
        out["empty_states"] = jax.jit(self.encode_clip)(out["text_encoder"], jnp.asarray(self.empty_ids[None]),
                                                        jnp.asarray(self.empty_mask[None]))[0]
        return out

    def projection(self) -> dict:
        """The fixed LLMResize projection (llm_size -> CLIP width) drawn from `model.llm_projection_seed`."""
        return llm_projection(self.projection_seed, self.llm_size, self.adapter.width)

    def encode_clip(self, clip_params, input_ids, attention_mask):
        """Frozen CLIP last hidden states (B, L, width)."""
        return self.clip.apply({"params": clip_params}, input_ids, attention_mask)

    def llm_vectors(self, llm_params, input_ids, attention_mask):
        """(B, llm_size) float32: the LLM's hidden states after block `llm_layer` (the last block before the
        final norm, as the release reads LLaMA's layer 39), averaged over the prompt's tokens. The release
        encoded one unpadded prompt at a time (`h.mean(1)`); the mask keeps padding out of the mean here."""
        hidden = self._llm.module.apply({"params": llm_params}, input_ids, attention_mask, output_hidden_states=True,
                                        last_layer_pre_norm=True)
        h = hidden[self.llm_layer % len(hidden[1:]) + 1].astype(jnp.float32)
        m = attention_mask.astype(jnp.float32)[..., None]
        return jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)

    # ---------------------------------------------------------------- training

    def init(self, rng, config):
        x = jnp.zeros((1, self.max_length, self.adapter.width), self.dtype)
        return self.adapter.init(rng, x)["params"]

    def make_optimizer(self, optim, total_steps):
        """The loop's AdamW (`t2ijax.train.optim`) on the live parameters; the dead ones (Q5) never change."""
        import optax

        from t2ijax.train.optim import make_optimizer

        tx, schedule = make_optimizer(optim, total_steps)
        if not self.adapter.dead_params:
            return tx, schedule
        abstract = jax.eval_shape(lambda: self.init(jax.random.PRNGKey(0), None))
        labels = jax.tree.map(lambda live: "live" if live else "dead", trainable_mask(abstract))
        return optax.multi_transform({"live": tx, "dead": optax.set_to_zero()}, labels), schedule

    def load_init(self, path, config, abstract):
        """`config.init_from` = an adapter .safetensors (the released layout, `t2ijax.weights.load_sur_adapter`).
        Its architecture must be this config's; eta too (Q8: an adapter only works at the eta it was trained
        with)."""
        from t2ijax.weights import load_sur_adapter

        module, params = load_sur_adapter(path, heads=self.adapter.heads, dead_params=self.adapter.dead_params)
        mine = {f.name: getattr(self.adapter, f.name) for f in dataclasses.fields(SURAdapter)
                if f.name in ("width", "depth", "heads", "ff_dim", "eta")}
        theirs = {k: getattr(module, k) for k in mine}
        if mine != theirs:
            raise ValueError(f"config.init_from={path!r} holds an adapter with {theirs}; model.sur gives {mine}")
        return params

    def _to_model_space(self, frozen, images, key):
        return images if self.vae is None else vae_encode(self.vae, frozen["vae"], images, key)

    def _llm_target(self, frozen, batch):
        if "llm_vector" in batch:  # from the feature cache (wrap_loader)
            v = batch["llm_vector"]
        elif "llm_input_ids" in batch and "llm" in frozen:
            v = self.llm_vectors(frozen["llm"], batch["llm_input_ids"], batch["llm_attention_mask"])
        else:
            raise ValueError("the LLM term needs 'llm_vector' (model.llm_feature_cache) or 'llm_input_ids' "
                             "(data.extra_captions.llm) in the batch")
        return apply_llm_projection(frozen["llm_projection"], jax.lax.stop_gradient(v.astype(jnp.float32)))

    def loss(self, params, frozen, batch, rng):
        images = batch["image"].astype(jnp.float32)
        drop_key, t_key, noise_key, vae_key, dropout_key = jax.random.split(rng, 5)
        simple = self.encode_clip(frozen["text_encoder"], batch["input_ids"], batch["attention_mask"])
        drop = self.drop_captions(drop_key, images.shape[0])
        simple = jax.lax.stop_gradient(jnp.where(drop[:, None, None], frozen["empty_states"][None], simple))
        out = self.adapter.apply({"params": params}, simple, deterministic=False, return_all=True,
                                 rngs={"dropout": dropout_key})
        metrics = {}
        loss = 0.0
        if self.w_llm > 0 or self.w_prompt > 0:
            complex_states = jax.lax.stop_gradient(self.encode_clip(
                frozen["text_encoder"], batch["complex_input_ids"], batch["complex_attention_mask"]))
            target = self._llm_target(frozen, batch) if self.w_llm > 0 else jnp.zeros(
                (images.shape[0], self.adapter.width))
            kd = sur_distillation_losses(out.encoder_out, out.out, target, complex_states,
                                         temperature=self.temperature, reproduce_release=self.kd == "release")
            for name, w in (("llm", self.w_llm), ("prompt", self.w_prompt)):
                if w > 0:
                    loss = loss + w * kd[name]
                    metrics[f"{name}_kd"] = kd[name]
        context = out.out if self.denoise_gradient else jax.lax.stop_gradient(out.out)
        x0 = jax.lax.stop_gradient(self._to_model_space(frozen, images, vae_key))
        mse = self.denoising_loss(lambda x_t, t: self._denoise(frozen["unet"], x_t, t, context), x0, t_key, noise_key)
        metrics["mse"] = mse
        if self.caption_dropout > 0:
            metrics["caption_dropout_frac"] = jnp.mean(drop.astype(jnp.float32))
        return loss + mse, metrics

    # ---------------------------------------------------------------- LLM feature cache

    def prepare(self, config) -> str | None:
        """Build `model.llm_feature_cache` (if set and missing): the pooled LLM vector of every train row's simple
        prompt, record i = row i. ``t2ijax prepare`` calls this."""
        from t2ijax.data.feature_cache import captions_sha256, write_arrays
        from t2ijax.data.tokenizer import tokenize

        if not self.llm_cache:
            return None
        path = os.path.expanduser(self.llm_cache)
        if os.path.exists(path):
            return path
        if self._llm is None:
            raise ValueError("building model.llm_feature_cache needs the LLM: set model.llm_path (or model.llm)")
        captions = training_captions(self.data_config)
        llm_params = self._llm.params(np.random.default_rng(self.frozen_seed))
        encode = jax.jit(self.llm_vectors)
        size = 32

        def records():
            for start in range(0, len(captions), size):
                chunk = captions[start:start + size]
                tok = tokenize(self.llm_tokenizer, chunk + [""] * (size - len(chunk)), self.llm_length)
                vectors = np.asarray(encode(llm_params, jnp.asarray(tok["input_ids"]),
                                            jnp.asarray(tok["attention_mask"])))
                for i in range(len(chunk)):
                    yield start + i, {"llm_vector": vectors[i]}

        write_arrays(records(), path, metadata={
            "kind": "sur_llm_vectors", "llm_path": self._llm.path or "random", "llm_layer": self.llm_layer,
            "split": "train", "captions_sha256": captions_sha256(captions)})
        return path

    def wrap_loader(self, loader, split: str):
        """The train loader, plus "llm_vector" read from `model.llm_feature_cache` when one is configured."""
        if not self.llm_cache or split != "train" or self.w_llm == 0:
            return loader
        return WithLLMVectors.from_path(loader, os.path.expanduser(self.llm_cache))

    # ---------------------------------------------------------------- sampling

    def _denoise(self, unet_params, x, t, cond):
        context, bias_fn = self.attention_control(cond, t, x.shape[1:3])
        return self.unet.apply({"params": unet_params}, x, t, context, attention_bias_fn=bias_fn)

    def adapt(self, params, cond_states, uncond_states, rng=None):
        """(adapted cond, uncond) for sampling: both through the adapter (release), in one call when the adapter
        attends across the batch (the release's concatenated [uncond; cond] CFG batch, Q1)."""
        rngs = {"dropout": rng} if self.adapter.dropout_at_inference and self.adapter.dropout_rate > 0 else None
        apply = lambda x: self.adapter.apply({"params": params}, x, rngs=rngs)
        if not self.adapt_uncond:
            return apply(cond_states), uncond_states
        if self.adapter.attend_across_batch:
            both = apply(jnp.concatenate([uncond_states, cond_states]))
            n = cond_states.shape[0]
            return both[n:], both[:n]
        return apply(cond_states), apply(uncond_states)

    def sample(self, params, frozen, prompts, rng=None, *, seeds=None, num_steps: int | None = None,
               guidance_scale: float | None = None, paint=None, paint_scale: float = 1.0) -> np.ndarray:
        """uint8 images (N, H, W, 3): CLIP(prompt) through the adapter, the config's sampler with classifier-free
        guidance against the adapted CLIP(""); image i's initial noise from `seeds[i]` (or all from `rng`).
        With dropout at inference (Q2) the dropout key is drawn from the first seed (or `rng`)."""
        ids, mask = self.tokens(prompts)
        cond = jax.jit(self.encode_clip)(frozen["text_encoder"], ids, mask)
        uncond = jnp.broadcast_to(frozen["empty_states"][None], cond.shape)
        key = jax.random.fold_in(jax.random.PRNGKey(int(seeds[0])) if seeds is not None else rng, 1)
        cond, uncond = jax.jit(self.adapt)(params, cond, uncond, key)
        if paint is not None:
            cond, uncond = self.paint_cond(cond, uncond, prompts, paint, paint_scale)
        decode = None if self.vae is None else (lambda x0: vae_decode(self.vae, frozen["vae"], x0))
        return self.sample_images(self._denoise, frozen["unet"], cond, uncond,
                                  (self.sample_size, self.sample_size, self.unet.in_channels), seeds=seeds, rng=rng,
                                  num_steps=num_steps, guidance_scale=guidance_scale, decode=decode)

    # ---------------------------------------------------------------- export

    def export(self, params, out_dir: str) -> list[str]:
        """The adapter in the released state-dict layout, its eta/switch sidecar and (with an LLM term) the
        LLMResize projection (``t2ijax convert``): `t2ijax.weights.save_sur_adapter`."""
        from t2ijax.weights import save_sur_adapter

        proj = None
        if self.w_llm > 0:
            try:
                proj = self.projection()
            except FileNotFoundError as e:  # neither the LLM folder nor its cache here: the adapter alone
                warnings.warn(f"LLMResize not exported (its width comes from the LLM or its feature cache: {e}); "
                              f"the adapter is complete without it (inference needs no LLM); it is "
                              f"t2ijax.methods.sur_losses.llm_projection({self.projection_seed}, <LLM width>, "
                              f"{self.adapter.width})", stacklevel=2)
        return [save_sur_adapter(self.adapter, jax.device_get(params), os.path.join(out_dir, "adapter.safetensors"),
                                 llm_projection=proj)]


class WithLLMVectors(WithCachedFeatures):
    """Adds "llm_vector" (B, llm_size) = cache[batch["record"]] (`model.llm_feature_cache`, train row order)."""

    what = "model.llm_feature_cache"

    @classmethod
    def from_path(cls, loader, path: str) -> "WithLLMVectors":
        from t2ijax.data.feature_cache import FeatureCache

        if not os.path.exists(path):
            raise FileNotFoundError(f"model.llm_feature_cache {path} does not exist: run `t2ijax prepare` with this "
                                    "config first")
        cache = FeatureCache(path)
        cls.check_rows(loader, cache, path)
        return cls(loader, cache)


def make_method(config) -> SURMethod:
    return SURMethod(config)
