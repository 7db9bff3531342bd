"""The kit every diffusion method is built from (see docs/adding_a_method.md).

* `MethodHooks`: the optional hooks of the method protocol (`t2ijax.train.method`) in one visible place.
* `DiffusionMethod`: the shared set-up (tokenizer, DDPM schedule, prediction type, caption dropout,
  sampling defaults), `denoising_loss` on it, and `sample_images` (DDIM with classifier-free guidance
  to uint8 images, initial noise by `t2ijax.train.sampling.initial_noise`).
* `denoising_loss`: the one noising block (epsilon / v / x0 on a DDPM schedule, or EDM), with optional
  min-SNR weighting and an optional per-pixel weight map.
* `FrozenModel` with `frozen_unet`, `frozen_vae`, `frozen_text_encoder`: frozen networks from an upstream
  folder (or a `t2ijax convert` export of a workdir), or random from a config with a warning.
* `WithCachedTextFeatures`, `open_feature_cache`, `training_captions`: precomputed text features.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax import diffusion
from t2ijax.methods import knowledge, paint_with_words
from t2ijax.models.attention import combine_edits
from t2ijax.train.sampling import initial_noise, sampling_settings


def field(cfg, name, default=None):
    """``cfg[name]``, or `default` when it is absent, None or ""."""
    return cfg[name] if name in cfg and cfg[name] not in (None, "") else default


def as_dict(value) -> dict:
    if value is None:
        return {}
    return dict(value.to_dict() if hasattr(value, "to_dict") else value)


def to_uint8(images) -> np.ndarray:
    """Images in [-1, 1] -> uint8 [0, 255]."""
    return np.asarray(jnp.clip((images + 1.0) * 127.5, 0, 255).round().astype(jnp.uint8))


# ------------------------------------------------------------------------------------------- the loss

@dataclasses.dataclass(frozen=True)
class EDMTraining:
    """EDM training noise (Karras et al. 2022): ln sigma ~ N(p_mean, p_std^2), loss weight lambda(sigma)."""

    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5


def denoising_loss(denoise: Callable, x0, t_key, noise_key, schedule, prediction_type: str = "epsilon", *,
                   min_snr_gamma: float | None = None, weight_map=None, levels=None):
    """Noise `x0`, denoise, and return the weighted MSE to the target (`diffusion.diffusion_loss`).

    DDPM (`schedule` a `diffusion.DiscreteSchedule`): t ~ U{0..T-1} from `t_key`, ``denoise(x_t, t)``
    predicts `prediction_type` ("epsilon" | "v_prediction" | "sample"); `min_snr_gamma` weighs each
    example by min-SNR-gamma (`diffusion.min_snr_weights`).
    EDM (`schedule` an `EDMTraining`, prediction_type "edm"): log-normal sigma from `t_key`,
    x_t = x0 + sigma * noise, ``denoise(x_t, sigma)`` is the preconditioned D(x; sigma)
    (`diffusion.edm_precondition`), target x0, weight lambda(sigma).
    `weight_map` (broadcastable to x0, e.g. (B, H, W, 1)) weighs each pixel's squared error (region
    weights); the per-example loss is the mean of the weighted squared error.
    `levels` (B,) gives the noise levels (int timesteps, or EDM sigmas) instead of drawing them from
    `t_key` (e.g. an expert's own interval, `t2ijax.diffusion.experts`).
    """
    b = x0.shape[0]
    noise = jax.random.normal(noise_key, x0.shape)
    if prediction_type == "edm":
        if not isinstance(schedule, EDMTraining):
            raise ValueError(f"prediction_type 'edm' needs an EDMTraining schedule, got {type(schedule).__name__}")
        if min_snr_gamma:
            raise ValueError("min-SNR weighting applies to DDPM targets; EDM has its own weight lambda(sigma)")
        sigma = (diffusion.edm_sample_training_sigmas(t_key, (b,), schedule.p_mean, schedule.p_std)
                 if levels is None else jnp.asarray(levels, jnp.float32))
        x_t = x0 + sigma.reshape((b,) + (1,) * (x0.ndim - 1)) * noise
        pred = denoise(x_t, sigma)
        return diffusion.diffusion_loss(pred, x0, diffusion.edm_loss_weight(sigma, schedule.sigma_data),
                                        pixel_weights=weight_map)
    t = (jax.random.randint(t_key, (b,), 0, schedule.num_train_timesteps) if levels is None
         else jnp.asarray(levels, jnp.int32))
    x_t = diffusion.add_noise(schedule, x0, noise, t)
    alpha, sigma = diffusion.alpha_sigma(schedule, t)
    target = diffusion.training_target(prediction_type, x0, noise, alpha, sigma)
    weights = None
    if min_snr_gamma:
        weights = diffusion.min_snr_weights(diffusion.snr(schedule, t), float(min_snr_gamma), prediction_type)
    return diffusion.diffusion_loss(denoise(x_t, t), target, weights, pixel_weights=weight_map)


# ------------------------------------------------------------------------------------------- the method base

# config.sample.sampler -> the samplers that take a DDPM or an EDM schedule
SIGMA_SAMPLERS = {"euler": diffusion.Euler, "heun": diffusion.Heun, "dpm": diffusion.DPMSolverPlusPlus}


class MethodHooks:
    """The method protocol's optional hooks (`t2ijax.train.method`); None = the method has none.

    The loop and the CLI call a hook only when it is callable, so a method overrides just the ones it has:
      sample(params, frozen, prompts, rng=None, *, seeds=None, num_steps=None, guidance_scale=None) -> uint8
          images (N, H, W, 3); ``t2ijax sample`` / ``eval`` / the demo, through `sampling.make_sampler`
      wrap_loader(loader, split) -> loader: the loop wraps its data loader (e.g. cached text features)
      prepare(config) -> str | None: ``t2ijax prepare`` builds method assets (e.g. a feature cache)
      export(params, out_dir) -> list[str]: ``t2ijax convert`` writes upstream layouts
      trainable_item: the checkpoint item holding the trainable params
      make_optimizer(optim, total_steps) / adapt_init_params(saved, abstract): see `t2ijax.train.method`
    """

    flops_per_example: float | None = None  # None: the loop takes XLA's cost analysis of the compiled step
    trainable_item: str = "params"
    sample: Callable | None = None
    wrap_loader: Callable | None = None
    prepare: Callable | None = None
    export: Callable | None = None

    def frozen(self, config):
        return {}


class DiffusionMethod(MethodHooks):
    """Set-up shared by the text-conditioned DDPM methods, from `config.data`, `config.model`, `config.sample`.

    `supports_knowledge`: whether the method's loss applies config.model.knowledge (`knowledge`).

    config.model: schedule, prediction_type (default "epsilon"), caption_dropout (default 0.1),
    min_snr_gamma (optional). config.sample: num_steps, guidance_scale, clip_sample.
    Subclasses set `clip_sample` when their default differs (off for VAE latents).
    """

    supports_knowledge = False

    def __init__(self, config):
        from t2ijax.data.tokenizer import load_tokenizer, tokenize

        m = config.model
        self.dtype = jnp.dtype(config.compute_dtype)
        self.max_length = int(config.data.max_length)
        self.resolution = int(config.data.resolution)
        self.tokenizer = load_tokenizer(config.data.tokenizer, self.max_length)
        self._tokenize = tokenize
        self.schedule = diffusion.DiscreteSchedule(**as_dict(field(m, "schedule", {})))
        self.prediction_type = str(field(m, "prediction_type", "epsilon"))
        diffusion.schedules.check_prediction_type(self.prediction_type)
        self.min_snr_gamma = field(m, "min_snr_gamma")
        self.caption_dropout = float(field(m, "caption_dropout", 0.1))
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"model.caption_dropout must be in [0, 1], got {self.caption_dropout}")
        empty = tokenize(self.tokenizer, [""], self.max_length)
        self.empty_ids, self.empty_mask = empty["input_ids"][0], empty["attention_mask"][0]
        self.sample_steps = int(config.sample.num_steps)
        self.guidance_scale = float(config.sample.guidance_scale)
        # DDIM's x0 clipping (diffusers' clip_sample, on by default there) keeps an under-trained pixel-space
        # model's samples in [-1, 1]; VAE latents have no such range.
        self.clip_sample = bool(config.sample.get("clip_sample", True))
        self.sampler_name = str(config.sample.get("sampler", "ddim"))
        self.paint_settings = paint_with_words.PaintSettings.from_config(config.sample.get("paint"))
        self.knowledge = knowledge.Knowledge.from_config(config.model.get("knowledge"))
        if self.knowledge is not None:
            if not self.supports_knowledge:
                raise ValueError(f"config.model.knowledge: {type(self).__name__} does not train with ERNIE-ViLG 2.0 "
                                 "knowledge (txt2img and experts do)")
            self.knowledge.check_data(config.data)

    def tokens(self, prompts) -> tuple[jax.Array, jax.Array]:
        """(input_ids, attention_mask) (N, max_length) of `prompts` (an empty one is the unconditional input);
        truncated or mostly unknown ones are a warning (`t2ijax.data.tokenizer.check_prompts`)."""
        if not prompts:
            raise ValueError("sample needs at least one prompt")
        from t2ijax.data.tokenizer import check_prompts

        notes = check_prompts(self.tokenizer, list(prompts), self.max_length, allow_empty=True)
        if notes:
            warnings.warn(f"{len(notes)} note(s) on {len(prompts)} prompts: " + "; ".join(notes[:5])
                          + ("; ..." if len(notes) > 5 else ""), stacklevel=2)
        tok = self._tokenize(self.tokenizer, list(prompts), self.max_length)
        return jnp.asarray(tok["input_ids"]), jnp.asarray(tok["attention_mask"])

    def drop_captions(self, key, batch_size: int) -> jax.Array:
        """(B,) bool: which captions caption dropout replaces by the empty one."""
        return jax.random.bernoulli(key, self.caption_dropout, (batch_size,))

    # ---------------------------------------------------------------- cross-attention control

    def attention_control(self, cond, level, hw):
        """(context, attention_bias_fn) of a conditioning: the plain context array, or a dict with "context"
        and the optional controls "paint" (B, H, W, L) paint-with-words matrices (`paint_with_words`), "sigma"
        (the noise level paint weights use; default: the DDPM sigma of timestep `level`) and "key_tokens"
        (B, L) ERNIE key-token emphasis (`knowledge`); `hw` is the U-Net input's spatial size."""
        if not isinstance(cond, dict):
            return cond, None
        fns = []
        if "paint" in cond:
            if "sigma" in cond:  # an EDM model's own sigma
                if self.paint_settings.sigma != "model":
                    raise ValueError("sample.paint.sigma='sd' applies to DDPM models; an EDM model paints with its sigma")
                sigma = cond["sigma"]
            else:
                sigma = paint_with_words.ddpm_sigma(self.schedule, level, self.paint_settings)
            fns.append(paint_with_words.bias_fn(cond["paint"], sigma, self.paint_settings, hw))
        if "key_tokens" in cond:
            if self.knowledge is None:
                raise ValueError("key_tokens in the conditioning but config.model.knowledge is not set")
            fns.append(self.knowledge.key_token_fn(cond["key_tokens"]))
        if not fns:
            return cond["context"], None
        return cond["context"], lambda lq, lk: combine_edits(*(f(lq, lk) for f in fns))

    def paint_cond(self, cond, uncond, prompts, paint, paint_scale: float = 1.0):
        """Add paint-with-words matrices to `cond` (zeros to `uncond`: its branch stays unbiased); `paint` is
        one `paint_with_words.Paint` (or None) per prompt, `paint_scale` the global weight w'."""
        from t2ijax.data.tokenizer import CaptionTokenizer

        matrix = paint_with_words.prompt_matrices(list(paint), list(prompts), CaptionTokenizer(self.tokenizer,
                                                                                            self.max_length),
                                                  paint_scale)
        def add(c, a):
            c = dict(c) if isinstance(c, dict) else {"context": c}
            return {**c, "paint": jnp.asarray(a)}
        return add(cond, matrix), add(uncond, np.zeros_like(matrix))

    def make_sampler(self):
        """The sampler `config.sample.sampler` names on this method's DDPM schedule: "ddim" (trailing spacing,
        `clip_sample` from config), "euler", "heun" or "dpm" (diffusers' defaults)."""
        if self.sampler_name == "ddim":
            return diffusion.DDIM(schedule=self.schedule, prediction_type=self.prediction_type,
                                  timestep_spacing="trailing", clip_sample=self.clip_sample)
        if self.sampler_name not in SIGMA_SAMPLERS:
            raise ValueError(f"config.sample.sampler {self.sampler_name!r}; choose ddim, euler, heun or dpm")
        return SIGMA_SAMPLERS[self.sampler_name](schedule=self.schedule, prediction_type=self.prediction_type)

    def denoising_loss(self, denoise, x0, t_key, noise_key, weight_map=None):
        """`denoising_loss` under this method's schedule, prediction type and min-SNR setting."""
        return denoising_loss(denoise, x0, t_key, noise_key, self.schedule, self.prediction_type,
                              min_snr_gamma=self.min_snr_gamma, weight_map=weight_map)

    def sample_images(self, denoise, params, cond, uncond, shape, *, seeds=None, rng=None, num_steps=None,
                      guidance_scale=None, decode=None, sampler=None, expert_table=None) -> np.ndarray:
        """uint8 images: the sampler of `make_sampler` (config.sample.sampler, DDIM by default) with
        classifier-free guidance of `cond` against `uncond`, from the initial noise of `seeds` (one per image)
        or `rng` (`initial_noise`), `shape` the per-image (H, W, C) the denoiser works in; `decode` maps its
        x0 to pixels (e.g. a VAE decoder). Steps and guidance default to config.sample
        (`sampling.sampling_settings`). `sampler` replaces `make_sampler`'s; `expert_table(plan)` gives the
        per-evaluation expert table when `params` are experts."""
        settings = sampling_settings(self, num_steps, guidance_scale)
        if sampler is None:
            sampler = self.make_sampler()
        steps = int(settings["num_steps"])
        table = None
        if expert_table is not None:
            table = expert_table(diffusion.samplers.cached_plan(sampler, steps))
        x_T = initial_noise(jax.tree.leaves(cond)[0].shape[0], shape, seeds=seeds, rng=rng)
        x0 = diffusion.sample(denoise, params, sampler, x_T, cond, num_steps=steps, uncond=uncond,
                              guidance_scale=float(settings["guidance_scale"]), expert_table=table)
        return to_uint8(x0 if decode is None else decode(x0))


# ------------------------------------------------------------------------------------------- frozen networks

def random_frozen_params(module, rng: np.random.Generator, *args, **kwargs):
    """Random params for a stand-in frozen module, drawn on the host (no init compilation).

    Norm scales 1, biases 0, other leaves N(0, 1/fan_in) with fan_in = prod(shape[:-1])
    (embeddings N(0, 1)). Only for smoke runs without pretrained weights.
    """
    from t2ijax.models.layers import abstract_init

    abstract, _ = abstract_init(module, *args, **kwargs)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "bias":
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = 1 if name == "embedding" else max(1, int(np.prod(leaf.shape[:-1])))
        return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)


@dataclasses.dataclass
class FrozenModel:
    """A frozen network: its Linen module, the folder its weights load from (None: random), how to load them,
    and the example inputs random weights are shaped by."""

    name: str
    module: Any
    path: str | None
    load: Callable[..., Any]  # load(path, shardings=None) -> params
    example_inputs: Callable[[], tuple[tuple, dict]]

    def shardings(self, shard_config):
        """Each param's sharding on the mesh, from the logical axes the module names (FSDP etc. by the rules)."""
        from t2ijax.models.layers import abstract_init

        args, kwargs = self.example_inputs()
        abstract, specs = abstract_init(self.module, *args, **kwargs)
        return shard_config.tree_shardings(specs, abstract)

    def params(self, rng: np.random.Generator, shard_config=None):
        """The loaded weights, or random ones drawn from `rng` (with a warning: they make a smoke run only).
        With `shard_config`, every array goes straight onto its sharding (a 7B frozen LLM is never whole on
        one device)."""
        shardings = self.shardings(shard_config) if shard_config is not None else None
        if self.path:
            return self.load(self.path, shardings=shardings)
        warnings.warn(f"frozen {self.name} ({type(self.module).__name__}) has RANDOM weights: no folder given, "
                      "only a config; fine for smoke tests, useless for real training", stacklevel=2)
        args, kwargs = self.example_inputs()
        params = random_frozen_params(self.module, rng, *args, **kwargs)
        return params if shardings is None else jax.device_put(params, shardings)


def vae_encode(vae, vae_params, images, key):
    """Scaled VAE latents of `images` in [-1, 1]: a draw from the encoder's Gaussian (latent diffusion's x0)."""
    mean, logvar = vae.apply({"params": vae_params}, images, method="encode")
    return vae.scale_latents(mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape))


def vae_decode(vae, vae_params, latents):
    """Images in [-1, 1] from scaled VAE latents."""
    return vae.apply({"params": vae_params}, vae.unscale_latents(latents), method="decode")


def _folder(path: str | None, sub: str) -> str | None:
    """`path`, or its `sub` folder when `path` is a `t2ijax convert` export or a pipeline folder."""
    if path and not os.path.exists(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, sub)):
        return os.path.join(path, sub)
    return path or None


def frozen_unet(path: str | None, config, dtype) -> FrozenModel | None:
    """A diffusers U-Net folder, or a U-Net config for random weights; None when neither is given."""
    from t2ijax.models.unet import UNet2DConditionModel
    from t2ijax.weights import load_unet
    from t2ijax.weights.torch_layout import read_config

    path = _folder(path, "unet")
    if not path and not config:
        return None
    unet = UNet2DConditionModel.from_config(read_config(path) if path else as_dict(config), dtype=dtype)

    def example_inputs():
        sample, t, context, added = unet.example_inputs(context_length=8)
        kwargs = {"added_cond_kwargs": added} if added is not None else {}
        class_labels = unet.example_class_labels()
        if class_labels is not None:  # a U-Net with a class embedding needs class_labels to initialise
            kwargs["class_labels"] = class_labels
        return (sample, t, context), kwargs

    return FrozenModel("unet", unet, path, lambda p, shardings=None: load_unet(p, shardings=shardings)[1],
                       example_inputs)


def frozen_vae(path: str | None, config, dtype) -> FrozenModel | None:
    """A diffusers VAE folder, or a VAE config for random weights; None when neither is given."""
    from t2ijax.models.vae import AutoencoderKL
    from t2ijax.weights import load_vae
    from t2ijax.weights.torch_layout import read_config

    path = _folder(path, "vae")
    if not path and not config:
        return None
    vae = AutoencoderKL.from_config(read_config(path) if path else as_dict(config), dtype=dtype)
    size = 2 ** (len(vae.block_out_channels) - 1)
    return FrozenModel("vae", vae, path, lambda p, shardings=None: load_vae(p, shardings=shardings)[1],
                       lambda: ((jnp.zeros((1, size, size, vae.in_channels)),), {}))


def frozen_denoiser(m, dtype, resolution: int, what: str):
    """(U-Net, VAE or None, sample_size) of a method that trains against a frozen denoiser: the U-Net from
    `model.unet_path` / `model.unet` (required) and the optional VAE from `model.vae_path` / `model.vae`
    (`frozen_unet`, `frozen_vae`); checks the U-Net's input channels against the VAE's latents (or pixels)
    and the resolution against the VAE's downsampling. sample_size is the U-Net's input size."""
    unet = frozen_unet(field(m, "unet_path"), field(m, "unet"), dtype)
    if unet is None:
        raise ValueError(f"{what} needs model.unet_path (a diffusers U-Net folder) or model.unet (its config)")
    vae = frozen_vae(field(m, "vae_path"), field(m, "vae"), dtype)
    channels = vae.module.latent_channels if vae is not None else 3
    if unet.module.in_channels != channels:
        raise ValueError(f"the U-Net takes {unet.module.in_channels} input channels but the "
                         f"{'VAE latents have' if vae is not None else 'pixel images have'} {channels}")
    factor = 2 ** (len(vae.module.block_out_channels) - 1) if vae is not None else 1
    if resolution % factor:
        raise ValueError(f"data.resolution {resolution} is not divisible by the VAE factor {factor}")
    unet.module.check_sample_size(resolution // factor, f"the latent size (data.resolution {resolution} / VAE factor "
                                  f"{factor})" if vae is not None else "data.resolution")
    return unet, vae, resolution // factor


def _text_classes():
    from t2ijax.models.text import T5Config, T5EncoderModel
    from t2ijax.models.text.clip import CLIPTextConfig, CLIPTextModel
    from t2ijax.models.text.llama import LlamaConfig, LlamaModel

    return {"t5": (T5Config, T5EncoderModel), "llama": (LlamaConfig, LlamaModel),
            "clip": (CLIPTextConfig, CLIPTextModel)}


def _check_text_length(cfg: dict, kind: str, max_length: int, whose: str, path: str) -> None:
    """CLIP's learned positions end at max_position_embeddings: longer text cannot be encoded (an error). Llama's
    rotary and T5's relative positions compute at any length, but past the trained length (Llama's
    max_position_embeddings, T5's n_positions where its config gives one) the features are untrained: a warning."""
    limit = int(cfg.get("n_positions" if kind == "t5" else "max_position_embeddings", 0) or 0)
    if not limit or max_length <= limit:
        return
    message = f"data.max_length {max_length} exceeds {whose} {limit} positions ({path})"
    if kind == "clip":
        raise ValueError(f"{message}: set data.max_length <= {limit}")
    warnings.warn(f"{message}, the length it was trained on: tokens past {limit} get untrained positions; set "
                  f"data.max_length <= {limit} unless that is intended", stacklevel=3)


def frozen_text_encoder(path: str | None, fields, kind: str, dtype, *, vocab_size: int, max_length: int,
                        kinds=("t5", "llama", "clip"), what: str = "text encoder") -> FrozenModel:
    """A Hugging Face text-encoder folder (T5 / mT5 / UMT5, Llama, CLIP text), or config `fields` of a random
    encoder of `kind` (vocab_size 0 = `vocab_size`); `kinds` limits the architectures a method accepts."""
    from t2ijax.models.text.t5 import T5_MODEL_TYPES
    from t2ijax.weights import load_text_encoder
    from t2ijax.weights.torch_layout import read_config

    classes = _text_classes()
    path = _folder(path, "text_encoder")
    if path:
        cfg = read_config(path)
        model_type = cfg.get("model_type")
        kind = "t5" if model_type in T5_MODEL_TYPES else {"clip_text_model": "clip"}.get(model_type, model_type)
        if kind not in kinds:
            raise ValueError(f"{path}/config.json has model_type {model_type!r}; the {what} must be a "
                             f"{' / '.join(kinds)} model")
        config_class, module_class = classes[kind]
        module = module_class(config_class.from_hf(cfg), dtype=dtype)
        _check_text_length(cfg, kind, max_length, f"the {what}'s", path)
    else:
        fields = as_dict(fields)
        if not fields:
            raise ValueError(f"the {what} needs a local folder or config fields of a random frozen encoder")
        if not int(fields.get("vocab_size", 0)):
            fields["vocab_size"] = vocab_size
        if "max_position_embeddings" in fields and not int(fields["max_position_embeddings"]):
            fields["max_position_embeddings"] = max_length  # 0 = the data's max_length (as txt2img's config says)
        if kind not in kinds:
            raise ValueError(f"model.text_encoder_type must be one of {list(kinds)}, got {kind!r}")
        config_class, module_class = classes[kind]
        try:
            module = module_class(config_class(**fields), dtype=dtype)
        except TypeError as e:
            raise ValueError(f"model.text has a field {config_class.__name__} lacks: {e}") from None

    def example_inputs():
        ids = jnp.zeros((1, max_length), jnp.int32)
        return (ids, jnp.ones_like(ids)), {}

    return FrozenModel(what, module, path,
                       lambda p, shardings=None: load_text_encoder(p, dtype=dtype, shardings=shardings)[1],
                       example_inputs)


def text_width(text_encoder) -> int:
    """Width of a text encoder's hidden states (T5's d_model, else hidden_size)."""
    cfg = text_encoder.config
    return int(getattr(cfg, "d_model", None) or cfg.hidden_size)


# ------------------------------------------------------------------------------------------- feature caches

def training_captions(data_config) -> list[str]:
    """The train split's captions (kind `data_config.caption`) in row order: record i of a feature cache."""
    from t2ijax.data.pipeline import make_loader

    loader = make_loader(data_config, split="train", batch_size=1, seed=0, shuffle=False, drop_remainder=False)
    return [loader.caption(i) for i in range(len(loader.source))]


def open_feature_cache(path: str, max_length: int, width: int):
    """The `t2ijax.data.feature_cache` at `path`, checked to hold (max_length, width) features."""
    from t2ijax.data.feature_cache import FeatureCache

    cache = FeatureCache(path)
    meta = cache.metadata
    if int(meta["max_length"]) != max_length or int(meta["hidden_size"]) != width:
        raise ValueError(f"feature cache {path} holds ({meta['max_length']}, {meta['hidden_size']}) features; "
                         f"this config needs ({max_length}, {width}) (data.max_length, LLM width)")
    return cache


class WithCachedFeatures:
    """Wraps a train loader: each batch gets `add(batch, records)` of the cache's records of its "record" ids
    (a train-split cache's record i is train row i). By default every cached field is added; subclasses may check
    or rename in `add`;
    `lookup` reads the records (from several caches, if a subclass has them)."""

    what = "feature cache"  # the config field named in errors

    def __init__(self, loader, cache):
        self.loader, self.cache = loader, cache

    @classmethod
    def check_rows(cls, loader, cache, path: str) -> None:
        rows = len(getattr(loader, "source", ()))
        if rows != len(cache):
            raise ValueError(f"{cls.what} {path} has {len(cache)} records but the train split has {rows} rows "
                             "(the cache must hold the split's captions in row order)")

    def add(self, batch: dict, records: dict) -> dict:
        """Every field of the records joins the batch under its own name (subclasses check or rename)."""
        batch.update(records)
        return batch

    def __iter__(self):
        return self

    def lookup(self, records) -> dict:
        return self.cache.lookup(records)

    def __next__(self) -> dict:
        batch = dict(next(self.loader))
        if "record" not in batch:
            raise ValueError(f"{self.what} needs batches with a 'record' index (a t2ijax.data.pipeline dataset, not "
                             "data.name='synthetic')")
        return self.add(batch, self.lookup(batch["record"]))

    def get_state(self):
        return self.loader.get_state()

    def set_state(self, state) -> None:
        self.loader.set_state(state)

    def __getattr__(self, name):  # caption(), example(), source ... of the wrapped loader
        return getattr(self.loader, name)


class WithCachedTextFeatures(WithCachedFeatures):
    """Adds "text_features" (B, L, D) = cache[batch["record"]] to every batch.

    Each record's stored attention mask must equal the batch's (same tokenizer and max_length,
    same caption): a cheap check that the cache belongs to this split and tokenization.
    """

    what = "model.feature_cache"

    @classmethod
    def from_path(cls, loader, path: str, max_length: int, width: int) -> "WithCachedTextFeatures":
        """`loader` plus the features of the cache at `path`, which must hold the loader's rows in order."""
        path = os.path.expanduser(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"model.feature_cache {path} does not exist: run `t2ijax prepare` with this "
                                    "config (or t2ijax.data.feature_cache.build_feature_cache) first")
        cache = open_feature_cache(path, max_length, width)
        cls.check_rows(loader, cache, path)
        return cls(loader, cache)

    def add(self, batch: dict, cached: dict) -> dict:
        mask = cached["attention_mask"].astype(np.int32)
        if not np.array_equal(mask, np.asarray(batch["attention_mask"], np.int32)):
            bad = [int(r) for r, a, b in zip(batch["record"], mask, batch["attention_mask"])
                   if not np.array_equal(a, b)]
            raise ValueError(f"feature cache {self.cache.path} does not match the data at train rows {bad[:5]}: "
                             "rebuild it for this dataset, caption kind, tokenizer and max_length")
        batch["text_features"] = cached["hidden_states"]
        return batch
