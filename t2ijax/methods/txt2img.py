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
  min_snr_gamma        optional min-SNR-gamma loss weighting (`t2ijax.methods.common.denoising_loss`)
  knowledge            optional ERNIE-ViLG 2.0 knowledge-enhanced training (`t2ijax.methods.knowledge`)
config.sample: {num_steps, guidance_scale, clip_sample (default on), sampler ("ddim" | "euler" | "heun" |
  "dpm"), paint (paint-with-words settings, `t2ijax.methods.paint_with_words.PaintSettings`)}
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from t2ijax.methods.common import DiffusionMethod


class Txt2ImgMethod(DiffusionMethod):
    """Method interface (t2ijax.train.method); trainable params {"unet": ..., "text_encoder": ...}."""

    supports_knowledge = True

    def __init__(self, config):
        from t2ijax.models.text.clip import CLIPTextConfig, CLIPTextModel
        from t2ijax.models.unet import UNet2DConditionModel

        super().__init__(config)
        m = config.model
        unet_cfg = m.unet.to_dict()
        self.text_encoder = None
        if self.owns_text_encoder(config):
            self.text_encoder = self._build_text_encoder(m, CLIPTextConfig, CLIPTextModel)
            width = self.text_encoder.config.hidden_size
            if unet_cfg.get("cross_attention_dim") != width:
                raise ValueError(f"model.unet.cross_attention_dim={unet_cfg.get('cross_attention_dim')} must "
                                 f"equal model.text.hidden_size={width}")
        self._check_channels(unet_cfg)
        self.unet = UNet2DConditionModel.from_config(unet_cfg, dtype=self.dtype)
        self.unet.check_sample_size(self.resolution, "data.resolution")

    def owns_text_encoder(self, config) -> bool:
        """Whether the method trains its own text encoder from config.model.text (subclasses with other
        conditioning may not)."""
        return True

    def _build_text_encoder(self, m, CLIPTextConfig, CLIPTextModel):
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
        return CLIPTextModel(CLIPTextConfig(**text), dtype=self.dtype)

    def _check_channels(self, unet_cfg) -> None:
        if unet_cfg.get("in_channels") != 3 or unet_cfg.get("out_channels") != 3:
            raise ValueError("txt2img works in pixel space: model.unet.in_channels and out_channels must be 3")

    # ---------------------------------------------------------------- training

    def init(self, rng, config):
        unet_key, text_key = jax.random.split(rng)
        ids = jnp.zeros((1, self.max_length), jnp.int32)
        text_vars = self.text_encoder.init(text_key, ids, jnp.ones_like(ids))
        width = self.text_encoder.config.hidden_size
        x = jnp.zeros((1, self.resolution, self.resolution, 3))
        unet_vars = self.unet.init(unet_key, x, jnp.zeros((1,)), jnp.zeros((1, self.max_length, width)))
        return {"text_encoder": text_vars["params"], "unet": unet_vars["params"]}

    def encode_text(self, text_params, input_ids, attention_mask):
        return self.text_encoder.apply({"params": text_params}, input_ids, attention_mask)

    def loss(self, params, frozen, batch, rng):
        x0 = batch["image"].astype(jnp.float32)
        drop_key, t_key, noise_key = jax.random.split(rng, 3)
        drop = self.drop_captions(drop_key, x0.shape[0])[:, None]
        ids = jnp.where(drop, jnp.asarray(self.empty_ids)[None], batch["input_ids"])
        mask = jnp.where(drop, jnp.asarray(self.empty_mask)[None], batch["attention_mask"])
        context = self.encode_text(params["text_encoder"], ids, mask)
        cond, weight_map = context, None
        if self.knowledge is not None:  # ERNIE-ViLG 2.0 knowledge: its own key, the other draws unchanged
            key_tokens, weight_map = self.knowledge.training_inputs(batch, jax.random.fold_in(rng, 7), ~drop[:, 0],
                                                                     x0.shape[1:3])
            if key_tokens is not None:
                cond = {"context": context, "key_tokens": key_tokens}
        loss = self.denoising_loss(lambda x_t, t: self._denoise(params["unet"], x_t, t, cond),
                                   x0, t_key, noise_key, weight_map=weight_map)
        return loss, {"caption_dropout_frac": jnp.mean(drop.astype(jnp.float32))}

    # ---------------------------------------------------------------- sampling

    def _denoise(self, unet_params, x, t, cond):
        context, bias_fn = self.attention_control(cond, t, x.shape[1:3])
        return self.unet.apply({"params": unet_params}, x, t, context, attention_bias_fn=bias_fn)

    def sample(self, params, frozen, prompts, rng=None, *, seeds=None, num_steps: int | None = None,
               guidance_scale: float | None = None, paint=None, paint_scale: float = 1.0) -> np.ndarray:
        """uint8 images (N, H, W, 3) for `prompts` with the config's sampler (DDIM by default) and
        classifier-free guidance against the empty caption; image i's initial noise from `seeds[i]`, or all
        from one key `rng`. `paint`: one `paint_with_words.Paint` (or None) per prompt, weight w' `paint_scale`."""
        ids, mask = self.tokens(prompts)
        n = len(prompts)
        cond = self.encode_text(params["text_encoder"], ids, mask)
        uncond = self.encode_text(params["text_encoder"], jnp.asarray(np.repeat(self.empty_ids[None], n, 0)),
                                  jnp.asarray(np.repeat(self.empty_mask[None], n, 0)))
        if paint is not None:
            cond, uncond = self.paint_cond(cond, uncond, prompts, paint, paint_scale)
        return self.sample_images(self._denoise, params["unet"], cond, uncond, (self.resolution, self.resolution, 3),
                                  seeds=seeds, rng=rng, num_steps=num_steps, guidance_scale=guidance_scale)

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
