"""Text-to-image from scratch: a pixel-space U-Net and a CLIP-style text transformer trained jointly.

The denoiser is `t2ijax.models.unet.UNet2DConditionModel` (diffusers semantics, NHWC)
working directly on pixels in [-1, 1] (no VAE: the Shapes images are 32x32); the text
encoder is `t2ijax.models.text.clip.CLIPTextModel` initialised at random and trained
with the U-Net; its last hidden state is the cross-attention context. Loss: MSE to
the `prediction_type` target ("epsilon" by default) under the DDPM schedule of
`t2ijax.diffusion`. Caption dropout replaces a caption by the empty one (BOS EOS) with
probability ``model.caption_dropout``, which is also the classifier-free-guidance
unconditional input at sampling time.

config.model:
  unet                 diffusers UNet2DConditionModel config (in/out channels 3 for pixels)
  text                 CLIPTextConfig fields; vocab_size 0 = the tokenizer's size,
                       max_position_embeddings 0 = data.max_length
  caption_dropout      probability of training on the empty caption
  prediction_type      "epsilon" | "v_prediction" | "sample"
  schedule             {num_train_timesteps, beta_start, beta_end, beta_schedule}
config.sample: {num_steps, guidance_scale}
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax import diffusion
from t2ijax.train.sampling import initial_noise


class Txt2ImgMethod:
    """Method interface (t2ijax.train.method); trainable params {"unet": ..., "text_encoder": ...}."""

    flops_per_example = None  # taken from XLA's cost analysis of the compiled step

    def __init__(self, config):
        from t2ijax.data.tokenizer import load_tokenizer, tokenize
        from t2ijax.models.text.clip import CLIPTextConfig, CLIPTextModel
        from t2ijax.models.unet import UNet2DConditionModel

        m = config.model
        self.dtype = jnp.dtype(config.compute_dtype)
        self.max_length = int(config.data.max_length)
        self.resolution = int(config.data.resolution)
        self.tokenizer = load_tokenizer(config.data.tokenizer, self.max_length)
        self._tokenize = tokenize
        text_fields = {f.name for f in dataclasses.fields(CLIPTextConfig)}
        text = {k: v for k, v in m.text.items()}
        unknown = sorted(set(text) - text_fields)
        if unknown:
            raise ValueError(f"config.model.text has fields {unknown} that CLIPTextConfig lacks "
                             f"({sorted(text_fields)})")
        text["vocab_size"] = int(text.get("vocab_size", 0)) or len(self.tokenizer)
        text["max_position_embeddings"] = int(text.get("max_position_embeddings", 0)) or self.max_length
        if text["max_position_embeddings"] < self.max_length:
            raise ValueError(f"model.text.max_position_embeddings={text['max_position_embeddings']} < "
                             f"data.max_length={self.max_length}")
        if "eos_token_id" not in m.text and self.tokenizer.eos_token_id is not None:
            text["eos_token_id"] = int(self.tokenizer.eos_token_id)
        self.text_encoder = CLIPTextModel(CLIPTextConfig(**text), dtype=self.dtype)
        unet_cfg = m.unet.to_dict()
        if unet_cfg.get("cross_attention_dim") != text["hidden_size"]:
            raise ValueError(f"model.unet.cross_attention_dim={unet_cfg.get('cross_attention_dim')} must equal "
                             f"model.text.hidden_size={text['hidden_size']}")
        if unet_cfg.get("in_channels") != 3 or unet_cfg.get("out_channels") != 3:
            raise ValueError("txt2img works in pixel space: model.unet.in_channels and out_channels must be 3")
        self.unet = UNet2DConditionModel.from_config(unet_cfg, dtype=self.dtype)
        self.schedule = diffusion.DiscreteSchedule(**m.schedule.to_dict())
        self.prediction_type = str(m.prediction_type)
        diffusion.schedules.check_prediction_type(self.prediction_type)
        self.caption_dropout = float(m.caption_dropout)
        empty = tokenize(self.tokenizer, [""], self.max_length)
        self.empty_ids, self.empty_mask = empty["input_ids"][0], empty["attention_mask"][0]
        self.sample_steps = int(config.sample.num_steps)
        self.guidance_scale = float(config.sample.guidance_scale)
        # Pixel-space data lies in [-1, 1]: clipping DDIM's x0 estimate (diffusers' clip_sample, on by default
        # there and in its DDPM pipelines) keeps an under-trained model's samples from blowing up.
        self.clip_sample = bool(config.sample.get("clip_sample", True))

    # ---------------------------------------------------------------- training

    def init(self, rng, config):
        unet_key, text_key = jax.random.split(rng)
        ids = jnp.zeros((1, self.max_length), jnp.int32)
        text_vars = self.text_encoder.init(text_key, ids, jnp.ones_like(ids))
        width = self.text_encoder.config.hidden_size
        x = jnp.zeros((1, self.resolution, self.resolution, 3))
        unet_vars = self.unet.init(unet_key, x, jnp.zeros((1,)), jnp.zeros((1, self.max_length, width)))
        return {"text_encoder": text_vars["params"], "unet": unet_vars["params"]}

    def frozen(self, config):
        return {}

    def encode_text(self, text_params, input_ids, attention_mask):
        return self.text_encoder.apply({"params": text_params}, input_ids, attention_mask)

    def loss(self, params, frozen, batch, rng):
        x0 = batch["image"].astype(jnp.float32)
        b = x0.shape[0]
        drop_key, t_key, noise_key = jax.random.split(rng, 3)
        drop = jax.random.bernoulli(drop_key, self.caption_dropout, (b,))[:, None]
        ids = jnp.where(drop, jnp.asarray(self.empty_ids)[None], batch["input_ids"])
        mask = jnp.where(drop, jnp.asarray(self.empty_mask)[None], batch["attention_mask"])
        context = self.encode_text(params["text_encoder"], ids, mask)
        t = jax.random.randint(t_key, (b,), 0, self.schedule.num_train_timesteps)
        noise = jax.random.normal(noise_key, x0.shape)
        x_t = diffusion.add_noise(self.schedule, x0, noise, t)
        alpha, sigma = diffusion.alpha_sigma(self.schedule, t)
        target = diffusion.training_target(self.prediction_type, x0, noise, alpha, sigma)
        pred = self.unet.apply({"params": params["unet"]}, x_t, t, context).astype(jnp.float32)
        loss = jnp.mean((pred - target) ** 2)
        return loss, {"caption_dropout_frac": jnp.mean(drop.astype(jnp.float32))}

    # ---------------------------------------------------------------- sampling

    def _denoise(self, unet_params, x, t, context):
        return self.unet.apply({"params": unet_params}, x, t, context)

    def sample(self, params, frozen, prompts, rng=None, *, seeds=None, num_steps: int | None = None,
               guidance_scale: float | None = None) -> np.ndarray:
        """uint8 images (N, H, W, 3) for `prompts` with deterministic DDIM and classifier-free guidance.

        The initial noise comes from `seeds` (one per prompt; image i is a function of prompt i and seed i
        only) or from one key `rng` for the batch (`t2ijax.train.sampling.initial_noise`)."""
        if not prompts:
            raise ValueError("sample needs at least one prompt")
        tok = self._tokenize(self.tokenizer, list(prompts), self.max_length)
        n = len(prompts)
        cond = self.encode_text(params["text_encoder"], jnp.asarray(tok["input_ids"]),
                                jnp.asarray(tok["attention_mask"]))
        uncond = self.encode_text(params["text_encoder"], jnp.asarray(np.repeat(self.empty_ids[None], n, 0)),
                                  jnp.asarray(np.repeat(self.empty_mask[None], n, 0)))
        sampler = diffusion.DDIM(schedule=self.schedule, prediction_type=self.prediction_type,
                                 timestep_spacing="trailing", clip_sample=self.clip_sample)
        x_T = initial_noise(n, (self.resolution, self.resolution, 3), seeds=seeds, rng=rng)
        x0 = diffusion.sample(self._denoise, params["unet"], sampler, x_T, cond,
                              num_steps=int(num_steps or self.sample_steps), uncond=uncond,
                              guidance_scale=float(self.guidance_scale if guidance_scale is None else guidance_scale))
        return np.asarray(jnp.clip((x0 + 1.0) * 127.5, 0, 255).round().astype(jnp.uint8))


    # ---------------------------------------------------------------- export

    def export(self, params, out_dir: str) -> list[str]:
        """diffusers U-Net folder + Hugging Face CLIP text-encoder folder (``t2ijax convert``)."""
        import os

        from t2ijax.weights import save_text_encoder, save_unet

        host = jax.device_get(params)
        unet_dir, text_dir = os.path.join(out_dir, "unet"), os.path.join(out_dir, "text_encoder")
        save_unet(self.unet, host["unet"], unet_dir)
        save_text_encoder(self.text_encoder, host["text_encoder"], text_dir)
        self.tokenizer.save_pretrained(os.path.join(out_dir, "tokenizer"))
        return [unet_dir, text_dir, os.path.join(out_dir, "tokenizer")]


def make_method(config) -> Txt2ImgMethod:
    return Txt2ImgMethod(config)
