"""Flax UNet2DConditionModel with diffusers' semantics (SD 1.x / 2.x, Kandinsky 2.2's decoder). NHWC.

    unet = UNet2DConditionModel.from_config(json.load(open("unet/config.json")))
    eps = unet.apply({"params": params}, latents_nhwc, t, text_states,
                     added_cond_kwargs=None, attention_bias_fn=None)

Parameter names mirror the diffusers state dict (`down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_q`),
so `t2ijax.weights.load_unet` converts checkpoints mechanically.

diffusers' naming quirk: in SD configs `attention_head_dim` is really the NUMBER of heads per block
(`num_attention_heads` must stay unset and defaults to it). Here the per-block values are the field
`attention_heads`. The Kandinsky 2.2 blocks (`t2ijax.models.simple_attn_blocks`: SimpleCrossAttn* and
Resnet{Down,Up}sampleBlock2D, UNetMidBlock2DSimpleCrossAttn) read the same value as the WIDTH of a head,
as diffusers does. As in diffusers, `resnet_skip_time_act` and `resnet_out_scale_factor` apply to those
blocks only, `mid_block_only_cross_attention` to UNetMidBlock2DSimpleCrossAttn only (unset, it follows a
boolean `only_cross_attention`), and `addition_embed_type_num_heads` (addition_embed_type="text" only)
has no effect.

Class conditioning (diffusers' `class_embedding`, passed as `class_labels=` to the forward):
  num_class_embeds=N (class_embed_type unset)  nn.Embedding(N, time_embed_dim); labels (B,) ints
  class_embed_type="timestep"                  labels (B,) (ints or floats, e.g. noise levels) through the
                                               timesteps' sinusoidal projection, then a TimestepEmbedding
  class_embed_type="identity"                  labels (B, time_embed_dim) used as they are
  class_embed_type="projection"                TimestepEmbedding from projection_class_embeddings_input_dim;
                                               labels (B, projection_class_embeddings_input_dim)
  class_embed_type="simple_projection"         one Linear from projection_class_embeddings_input_dim
The class embedding is added to the time embedding, or with `class_embeddings_concat` concatenated to it
(the resnets then take 2 x time_embed_dim), before `time_embedding_act_fn`, as in diffusers.
Not supported: the other addition_embed_types ("text", "text_image", "text_time", "image_hint"),
time_cond_proj_dim, GLIGEN, dual cross-attention, and the "fourier" time embedding.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from t2ijax.models import simple_attn_blocks, unet_blocks
from t2ijax.models.diffusers_config import (FrozenConfig, check_supported, freeze_config, merge_with_defaults,
                                            per_block, thaw_config)
from t2ijax.models.layers import Dense, Embed, GroupNorm, LayerNorm, activation, timestep_embedding
from t2ijax.models.resnet import conv2d

Dtype = Any

# diffusers' UNet2DConditionModel.__init__ defaults (v0.42), used for keys a config omits.
UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "only_cross_attention": False, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "dropout": 0.0, "act_fn": "silu",
    "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": 1280, "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "attention_head_dim": 8, "num_attention_heads": None, "dual_cross_attention": False,
    "use_linear_projection": False, "class_embed_type": None, "addition_embed_type": None,
    "addition_time_embed_dim": None, "num_class_embeds": None, "upcast_attention": False,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional", "time_embedding_dim": None, "time_embedding_act_fn": None,
    "timestep_post_act": None, "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None, "attention_type": "default", "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None, "cross_attention_norm": None, "addition_embed_type_num_heads": 64,
}

_DOWN = {"CrossAttnDownBlock2D": unet_blocks.CrossAttnDownBlock2D, "DownBlock2D": unet_blocks.DownBlock2D,
         "SimpleCrossAttnDownBlock2D": simple_attn_blocks.SimpleCrossAttnDownBlock2D,
         "ResnetDownsampleBlock2D": simple_attn_blocks.ResnetDownsampleBlock2D}
_UP = {"CrossAttnUpBlock2D": unet_blocks.CrossAttnUpBlock2D, "UpBlock2D": unet_blocks.UpBlock2D,
       "SimpleCrossAttnUpBlock2D": simple_attn_blocks.SimpleCrossAttnUpBlock2D,
       "ResnetUpsampleBlock2D": simple_attn_blocks.ResnetUpsampleBlock2D}
_MID = {"UNetMidBlock2DCrossAttn": unet_blocks.UNetMidBlock2DCrossAttn,
        "UNetMidBlock2DSimpleCrossAttn": simple_attn_blocks.UNetMidBlock2DSimpleCrossAttn}


def _is_activation(name) -> bool:
    try:
        activation(name)
        return True
    except ValueError:
        return False


def _optional_activation(name) -> bool:
    return name is None or _is_activation(name)


_SUPPORTED = {
    "down_block_types": lambda v: all(t in _DOWN for t in v),
    "up_block_types": lambda v: all(t in _UP for t in v),
    "mid_block_type": (*_MID, None),
    "num_attention_heads": (None,),
    "dropout": (0, 0.0),
    "norm_num_groups": lambda v: isinstance(v, int),
    "transformer_layers_per_block": lambda v: isinstance(v, int) or all(isinstance(x, int) for x in v),
    "reverse_transformer_layers_per_block": (None,),
    "cross_attention_dim": lambda v: isinstance(v, int) or len(set(v)) == 1,
    "encoder_hid_dim_type": (None, "text_proj", "image_proj"),
    "dual_cross_attention": (False,),
    "class_embed_type": (None, "timestep", "identity", "projection", "simple_projection"),
    "num_class_embeds": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
    "projection_class_embeddings_input_dim": lambda v: v is None or (isinstance(v, int) and v > 0),
    "addition_embed_type": (None, "image"),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "time_embedding_type": ("positional",),
    "time_cond_proj_dim": (None,),
    "attention_type": ("default",),
    "class_embeddings_concat": lambda v: isinstance(v, bool),
    "cross_attention_norm": (None,),
    "act_fn": _is_activation,
    "time_embedding_act_fn": _optional_activation,
    "timestep_post_act": _optional_activation,
    "conv_in_kernel": lambda v: v % 2 == 1,
    "conv_out_kernel": lambda v: v % 2 == 1,
}


class TimestepEmbedding(nn.Module):
    """linear_1 -> act -> linear_2 (-> post_act). `in_axis`: logical axis of the input features."""
    features: int
    act_fn: str = "silu"
    post_act_fn: str | None = None
    dtype: Dtype = jnp.float32
    in_axis: str | None = "embed"

    @nn.compact
    def __call__(self, x):
        x = activation(self.act_fn)(Dense(self.features, (self.in_axis, "mlp"), dtype=self.dtype,
                                          name="linear_1")(x))
        x = Dense(self.features, ("mlp", "embed"), dtype=self.dtype, name="linear_2")(x)
        return activation(self.post_act_fn)(x) if self.post_act_fn else x


class ImageProjection(nn.Module):
    """Kandinsky 2.2's `encoder_hid_proj`: an image embedding -> `num_tokens` context tokens, LayerNorm."""
    cross_attention_dim: int
    num_tokens: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image_embeds):
        b = image_embeds.shape[0]
        x = Dense(self.num_tokens * self.cross_attention_dim, (None, "embed"), dtype=self.dtype,
                  name="image_embeds")(image_embeds)
        return LayerNorm(dtype=self.dtype, name="norm")(x.reshape(b, self.num_tokens, self.cross_attention_dim))


class ImageTimeEmbedding(nn.Module):
    """Kandinsky 2.2's `add_embedding`: image_proj then image_norm, added to the time embedding."""
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image_embeds):
        x = Dense(self.features, (None, "embed"), dtype=self.dtype, name="image_proj")(image_embeds)
        return LayerNorm(dtype=self.dtype, name="image_norm")(x)


class UNet2DConditionModel(nn.Module):
    """diffusers' UNet2DConditionModel for the block types in `_DOWN` / `_MID` / `_UP`, NHWC.

    Build from a diffusers config with `from_config`; fields hold the resolved per-block values.
    `dtype` is the compute dtype (params stay float32; norms and softmax statistics are float32).
    `remat` rematerialises every resnet, transformer and added-KV attention in the backward pass.
    `config` keeps the original config.json (frozen) so `t2ijax.weights.save_unet` writes it back.
    """
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                         "DownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
    attention_heads: tuple[int, ...] = (8, 8, 8, 8)
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
    only_cross_attention: tuple[bool, ...] = (False, False, False, False)
    cross_attention_dim: int = 768
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    resnet_skip_time_act: bool = False
    resnet_out_scale_factor: float = 1.0
    mid_block_only_cross_attention: bool = False
    time_embedding_dim: int | None = None
    time_embedding_act_fn: str | None = None
    timestep_post_act: str | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    encoder_hid_dim_type: str | None = None
    encoder_hid_dim: int | None = None
    addition_embed_type: str | None = None
    class_embed_type: str | None = None
    num_class_embeds: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    class_embeddings_concat: bool = False
    dtype: Dtype = jnp.float32
    remat: bool = False
    config: FrozenConfig = ()

    # ---------------------------------------------------------------- config

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, dtype: Dtype = jnp.float32,
                    remat: bool = False) -> "UNet2DConditionModel":
        """Build from a diffusers UNet2DConditionModel config dict (keys starting with '_' are ignored).

        Raises ValueError naming every config value this port does not support.
        """
        c = merge_with_defaults(cfg, UNET_DEFAULTS, "UNet2DConditionModel")
        check_supported(c, _SUPPORTED, "UNet2DConditionModel")
        n = len(c["down_block_types"])
        if len(c["up_block_types"]) != n or len(c["block_out_channels"]) != n:
            raise ValueError(f"config needs as many up_block_types ({len(c['up_block_types'])}) and "
                             f"block_out_channels ({len(c['block_out_channels'])}) as down_block_types ({n})")
        if c["encoder_hid_dim"] is not None and c["encoder_hid_dim_type"] is None:
            c["encoder_hid_dim_type"] = "text_proj"  # diffusers' default when only encoder_hid_dim is set
        if c["encoder_hid_dim_type"] is not None and c["encoder_hid_dim"] is None:
            raise ValueError(f"encoder_hid_dim_type={c['encoder_hid_dim_type']!r} needs encoder_hid_dim")
        if c["addition_embed_type"] == "image" and c["encoder_hid_dim"] is None:
            raise ValueError("addition_embed_type='image' needs encoder_hid_dim (the image embedding width)")
        if c["class_embed_type"] in ("projection", "simple_projection") and \
                c["projection_class_embeddings_input_dim"] is None:
            raise ValueError(f"`class_embed_type`: {c['class_embed_type']!r} requires "
                             "`projection_class_embeddings_input_dim` be set")
        has_class = c["class_embed_type"] is not None or c["num_class_embeds"] is not None
        if c["class_embeddings_concat"] and not has_class:
            raise ValueError("class_embeddings_concat=True needs a class embedding (class_embed_type or "
                             "num_class_embeds): without one the resnets' 2 x time_embed_dim input never comes")
        if c["class_embeddings_concat"] and c["addition_embed_type"] is not None:
            raise ValueError("class_embeddings_concat=True with addition_embed_type="
                             f"{c['addition_embed_type']!r}: the added embedding (time_embed_dim wide) cannot be "
                             "added to the concatenated 2 x time_embed_dim one (diffusers fails there too)")
        cross = c["cross_attention_dim"]
        mid_only_cross = c["mid_block_only_cross_attention"]
        if mid_only_cross is None:  # diffusers: a boolean only_cross_attention also sets the mid block's
            mid_only_cross = c["only_cross_attention"] if isinstance(c["only_cross_attention"], bool) else False
        return cls(
            in_channels=c["in_channels"], out_channels=c["out_channels"],
            center_input_sample=c["center_input_sample"], flip_sin_to_cos=c["flip_sin_to_cos"],
            freq_shift=c["freq_shift"], down_block_types=tuple(c["down_block_types"]),
            mid_block_type=c["mid_block_type"], up_block_types=tuple(c["up_block_types"]),
            block_out_channels=tuple(c["block_out_channels"]),
            layers_per_block=per_block(c["layers_per_block"], n, "layers_per_block"),
            attention_heads=per_block(c["attention_head_dim"], n, "attention_head_dim"),
            transformer_layers_per_block=per_block(c["transformer_layers_per_block"], n,
                                                   "transformer_layers_per_block"),
            only_cross_attention=per_block(c["only_cross_attention"], n, "only_cross_attention"),
            cross_attention_dim=cross if isinstance(cross, int) else cross[0],
            downsample_padding=c["downsample_padding"], mid_block_scale_factor=c["mid_block_scale_factor"],
            act_fn=c["act_fn"], norm_num_groups=c["norm_num_groups"], norm_eps=c["norm_eps"],
            use_linear_projection=c["use_linear_projection"], upcast_attention=c["upcast_attention"],
            resnet_time_scale_shift=c["resnet_time_scale_shift"], resnet_skip_time_act=c["resnet_skip_time_act"],
            resnet_out_scale_factor=c["resnet_out_scale_factor"], mid_block_only_cross_attention=mid_only_cross,
            time_embedding_dim=c["time_embedding_dim"],
            time_embedding_act_fn=c["time_embedding_act_fn"], timestep_post_act=c["timestep_post_act"],
            conv_in_kernel=c["conv_in_kernel"], conv_out_kernel=c["conv_out_kernel"],
            encoder_hid_dim_type=c["encoder_hid_dim_type"], encoder_hid_dim=c["encoder_hid_dim"],
            addition_embed_type=c["addition_embed_type"], class_embed_type=c["class_embed_type"],
            num_class_embeds=c["num_class_embeds"],
            projection_class_embeddings_input_dim=c["projection_class_embeddings_input_dim"],
            class_embeddings_concat=c["class_embeddings_concat"], dtype=dtype, remat=remat,
            config=freeze_config(cfg))

    def check_sample_size(self, size: int, what: str = "the U-Net input size") -> None:
        """A clear error when `size` (pixels, or latents) does not halve cleanly at each of the U-Net's
        downsampling levels (instead of a shape mismatch deep inside a skip connection)."""
        factor = 2 ** (len(self.block_out_channels) - 1)
        if int(size) % factor or int(size) < factor:
            raise ValueError(f"{what} {size} is not a multiple of the U-Net's downsampling factor {factor} "
                             f"({len(self.block_out_channels)} resolution levels): use a resolution that is")

    def to_config(self) -> dict[str, Any]:
        """The diffusers config.json: the original one if built by `from_config`, else derived from the fields."""
        if self.config:
            return thaw_config(self.config)
        return {
            "_class_name": "UNet2DConditionModel", "in_channels": self.in_channels,
            "out_channels": self.out_channels, "center_input_sample": self.center_input_sample,
            "flip_sin_to_cos": self.flip_sin_to_cos, "freq_shift": self.freq_shift,
            "down_block_types": list(self.down_block_types), "mid_block_type": self.mid_block_type,
            "up_block_types": list(self.up_block_types), "block_out_channels": list(self.block_out_channels),
            "layers_per_block": list(self.layers_per_block), "attention_head_dim": list(self.attention_heads),
            "transformer_layers_per_block": list(self.transformer_layers_per_block),
            "only_cross_attention": list(self.only_cross_attention),
            "cross_attention_dim": self.cross_attention_dim, "downsample_padding": self.downsample_padding,
            "mid_block_scale_factor": self.mid_block_scale_factor, "act_fn": self.act_fn,
            "norm_num_groups": self.norm_num_groups, "norm_eps": self.norm_eps,
            "use_linear_projection": self.use_linear_projection, "upcast_attention": self.upcast_attention,
            "resnet_time_scale_shift": self.resnet_time_scale_shift,
            "resnet_skip_time_act": self.resnet_skip_time_act, "resnet_out_scale_factor": self.resnet_out_scale_factor,
            "mid_block_only_cross_attention": self.mid_block_only_cross_attention,
            "time_embedding_dim": self.time_embedding_dim, "time_embedding_act_fn": self.time_embedding_act_fn,
            "timestep_post_act": self.timestep_post_act, "conv_in_kernel": self.conv_in_kernel,
            "conv_out_kernel": self.conv_out_kernel, "encoder_hid_dim_type": self.encoder_hid_dim_type,
            "encoder_hid_dim": self.encoder_hid_dim, "addition_embed_type": self.addition_embed_type,
            "class_embed_type": self.class_embed_type, "num_class_embeds": self.num_class_embeds,
            "projection_class_embeddings_input_dim": self.projection_class_embeddings_input_dim,
            "class_embeddings_concat": self.class_embeddings_concat,
        }

    def example_inputs(self, batch: int = 1, size: int | None = None, context_length: int = 77):
        """(sample, timesteps, encoder_hidden_states, added_cond_kwargs) zeros of the right shapes."""
        size = size or 2 ** (len(self.block_out_channels) - 1)
        sample = jnp.zeros((batch, size, size, self.in_channels), jnp.float32)
        width = self.encoder_hid_dim if self.encoder_hid_dim_type == "text_proj" else self.cross_attention_dim
        context = jnp.zeros((batch, context_length, width), jnp.float32)
        added = None
        if self._needs_image_embeds:
            added = {"image_embeds": jnp.zeros((batch, self.encoder_hid_dim), jnp.float32)}
        return sample, jnp.zeros((batch,), jnp.int32), context, added

    def example_class_labels(self, batch: int = 1):
        """Zero `class_labels` of the shape and dtype the forward takes, or None without a class embedding."""
        kind = self._class_embedding_kind
        if kind is None:
            return None
        if kind in ("embedding", "timestep"):
            return jnp.zeros((batch,), jnp.int32)
        return jnp.zeros((batch, self._class_labels_width), jnp.float32)

    @property
    def _class_embedding_kind(self) -> str | None:
        """"embedding" (num_class_embeds), a class_embed_type, or None; as diffusers' `_set_class_embedding`."""
        if self.class_embed_type is None:
            return "embedding" if self.num_class_embeds is not None else None
        return self.class_embed_type

    @property
    def _time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def _class_labels_width(self) -> int | None:
        """The feature width of vector class labels ((B, D) kinds), None for (B,) labels."""
        kind = self._class_embedding_kind
        if kind in ("projection", "simple_projection"):
            return self.projection_class_embeddings_input_dim
        if kind == "identity":
            return self._time_embed_dim
        return None

    @property
    def _needs_image_embeds(self) -> bool:
        return self.addition_embed_type == "image" or self.encoder_hid_dim_type == "image_proj"

    # --------------------------------------------------------------- forward

    def _block_kwargs(self, cls, heads, head_dim) -> dict[str, Any]:
        """What diffusers' get_*_block passes by block type: the Kandinsky blocks take `attention_head_dim` as
        the head width (`head_dim`) and the resnet_* options; the Transformer2DModel blocks take it as the
        head count (`heads`)."""
        if issubclass(cls, simple_attn_blocks.SimpleBlock):
            return dict(head_dim=head_dim, skip_time_act=self.resnet_skip_time_act,
                        output_scale_factor=self.resnet_out_scale_factor)
        return dict(heads=heads)

    def _check_class_labels(self, class_labels, b: int):
        kind = self._class_embedding_kind
        if kind is None:
            if class_labels is not None:
                raise ValueError("class_labels were given but this U-Net has no class embedding "
                                 "(class_embed_type=None, num_class_embeds=None)")
            return
        desc = (f"num_class_embeds={self.num_class_embeds}" if kind == "embedding"
                else f"class_embed_type={kind!r}")
        width = self._class_labels_width
        want = f"({b},)" if width is None else f"({b}, {width})"
        if class_labels is None:
            raise ValueError(f"class_labels should be provided when the U-Net has a class embedding ({desc}): "
                             f"pass class_labels= of shape {want}")
        shape = tuple(class_labels.shape)
        if shape != ((b,) if width is None else (b, width)):
            raise ValueError(f"class_labels must have shape {want} for {desc}, got shape {shape}")
        if kind == "embedding" and not jnp.issubdtype(class_labels.dtype, jnp.integer):
            raise ValueError(f"class_labels must be integer class ids for {desc}, got dtype {class_labels.dtype}")

    def _check_inputs(self, sample, timesteps, context, added_cond_kwargs, class_labels=None):
        if sample.ndim != 4 or sample.shape[-1] != self.in_channels:
            raise ValueError(f"sample must be NHWC with {self.in_channels} channels, got shape {sample.shape}")
        b = sample.shape[0]
        if timesteps.ndim > 1 or (timesteps.ndim == 1 and timesteps.shape[0] not in (1, b)):
            raise ValueError(f"timesteps must be a scalar or shape ({b},), got shape {timesteps.shape}")
        self._check_class_labels(class_labels, b)
        if self._needs_image_embeds:
            if not added_cond_kwargs or "image_embeds" not in added_cond_kwargs:
                raise ValueError(f"this U-Net (addition_embed_type={self.addition_embed_type!r}, encoder_hid_dim_type="
                                 f"{self.encoder_hid_dim_type!r}) needs added_cond_kwargs={{'image_embeds': (B, "
                                 f"{self.encoder_hid_dim})}}")
            emb = added_cond_kwargs["image_embeds"]
            if emb.shape != (b, self.encoder_hid_dim):
                raise ValueError(f"image_embeds must have shape ({b}, {self.encoder_hid_dim}), got {emb.shape}")
        if self.encoder_hid_dim_type == "image_proj":
            return  # the context is built from image_embeds; encoder_hidden_states is ignored, as in diffusers
        want = self.encoder_hid_dim if self.encoder_hid_dim_type == "text_proj" else self.cross_attention_dim
        if context is None or context.ndim != 3 or context.shape[0] != b or context.shape[-1] != want:
            got = None if context is None else context.shape
            raise ValueError(f"encoder_hidden_states must have shape ({b}, L, {want}), got {got}")

    def _class_embed(self, class_labels, time_dim: int):
        """diffusers' `get_class_embed` (called inside the compact `__call__`): (B, time_dim) in `dtype`, or None."""
        kind, dt = self._class_embedding_kind, self.dtype
        if kind is None:
            return None
        if kind == "embedding":
            return Embed(self.num_class_embeds, time_dim, ("vocab", "embed"), dtype=dt,
                         name="class_embedding")(class_labels).astype(dt)
        if kind == "timestep":  # the timesteps' own projection (float32), cast to the compute dtype
            proj = timestep_embedding(class_labels, self.block_out_channels[0], flip_sin_to_cos=self.flip_sin_to_cos,
                                      downscale_freq_shift=self.freq_shift).astype(dt)
            return TimestepEmbedding(time_dim, self.act_fn, dtype=dt, name="class_embedding")(proj).astype(dt)
        x = class_labels.astype(dt)
        if kind == "identity":
            return x
        if kind == "projection":  # diffusers builds this TimestepEmbedding with its default act_fn ("silu")
            return TimestepEmbedding(time_dim, "silu", dtype=dt, in_axis=None, name="class_embedding")(x).astype(dt)
        if kind == "simple_projection":
            return Dense(time_dim, (None, "embed"), dtype=dt, name="class_embedding")(x).astype(dt)
        raise ValueError(f"unsupported class_embed_type {kind!r}")

    @nn.compact
    def __call__(self, sample, timesteps, encoder_hidden_states, added_cond_kwargs=None,
                 attention_bias_fn: Callable[[int, int], Any] | None = None, *, class_labels=None):
        """Noise (or v) prediction, NHWC like `sample`.

        sample: (B, H, W, in_channels); timesteps: scalar or (B,); encoder_hidden_states: (B, L, D).
        added_cond_kwargs: {"image_embeds": (B, encoder_hid_dim)} for image-conditioned configs.
        attention_bias_fn(query_length, key_length): additive logit bias for every cross-attention,
        broadcastable to (B, heads, Lq, Lk), or None.
        class_labels: required exactly when the config has a class embedding (see the module docstring):
        (B,) integer ids (num_class_embeds), (B,) timestep-like values (class_embed_type="timestep"), or
        (B, D) vectors ("projection" / "simple_projection": D = projection_class_embeddings_input_dim;
        "identity": D = time_embed_dim). `example_class_labels` gives zeros of the right shape.
        """
        timesteps = jnp.asarray(timesteps)
        class_labels = None if class_labels is None else jnp.asarray(class_labels)
        self._check_inputs(sample, timesteps, encoder_hidden_states, added_cond_kwargs, class_labels)
        b = sample.shape[0]
        dt = self.dtype
        n = len(self.block_out_channels)
        if self.center_input_sample:
            sample = 2 * sample - 1.0

        # time (and image) embedding
        t_emb = timestep_embedding(jnp.broadcast_to(timesteps.reshape(-1), (b,)), self.block_out_channels[0],
                                   flip_sin_to_cos=self.flip_sin_to_cos,
                                   downscale_freq_shift=self.freq_shift).astype(dt)
        time_dim = self._time_embed_dim
        emb = TimestepEmbedding(time_dim, self.act_fn, self.timestep_post_act, dtype=dt, name="time_embedding")(t_emb)
        class_emb = self._class_embed(class_labels, time_dim)
        if class_emb is not None:
            emb = jnp.concatenate([emb, class_emb], axis=-1) if self.class_embeddings_concat else emb + class_emb
        if self.addition_embed_type == "image":
            emb = emb + ImageTimeEmbedding(time_dim, dtype=dt, name="add_embedding")(
                added_cond_kwargs["image_embeds"].astype(dt))
        if self.time_embedding_act_fn:
            emb = activation(self.time_embedding_act_fn)(emb)

        context = encoder_hidden_states
        if self.encoder_hid_dim_type == "text_proj":
            context = Dense(self.cross_attention_dim, (None, "embed"), dtype=dt,
                            name="encoder_hid_proj")(context.astype(dt))
        elif self.encoder_hid_dim_type == "image_proj":
            context = ImageProjection(self.cross_attention_dim, dtype=dt, name="encoder_hid_proj")(
                added_cond_kwargs["image_embeds"].astype(dt))
        context = context.astype(dt)

        common = dict(groups=self.norm_num_groups, eps=self.norm_eps, act_fn=self.act_fn,
                      time_embedding_norm=self.resnet_time_scale_shift,
                      use_linear_projection=self.use_linear_projection, upcast_attention=self.upcast_attention,
                      dtype=dt, remat=self.remat)

        x = conv2d(self.block_out_channels[0], self.conv_in_kernel, dtype=dt, name="conv_in")(sample.astype(dt))
        skips = [x]
        for i, kind in enumerate(self.down_block_types):
            cls = _DOWN[kind]
            block = cls(out_channels=self.block_out_channels[i], num_layers=self.layers_per_block[i],
                        transformer_layers=self.transformer_layers_per_block[i],
                        only_cross_attention=self.only_cross_attention[i], add_downsample=i < n - 1,
                        downsample_padding=self.downsample_padding, name=f"down_blocks.{i}",
                        **self._block_kwargs(cls, self.attention_heads[i], self.attention_heads[i]), **common)
            x, res = block(x, emb, context, attention_bias_fn)
            skips.extend(res)

        if self.mid_block_type is not None:
            cls = _MID[self.mid_block_type]
            kwargs = self._block_kwargs(cls, self.attention_heads[-1], self.attention_heads[-1])
            if cls is simple_attn_blocks.UNetMidBlock2DSimpleCrossAttn:
                kwargs["only_cross_attention"] = self.mid_block_only_cross_attention
            kwargs["output_scale_factor"] = self.mid_block_scale_factor
            x = cls(out_channels=self.block_out_channels[-1], num_layers=1,
                    transformer_layers=self.transformer_layers_per_block[-1], name="mid_block", **kwargs, **common,
                    )(x, emb, context, attention_bias_fn)

        rev = lambda t: tuple(reversed(t))  # noqa: E731
        channels, layers, heads = rev(self.block_out_channels), rev(self.layers_per_block), rev(self.attention_heads)
        t_layers, only_cross = rev(self.transformer_layers_per_block), rev(self.only_cross_attention)
        for i, kind in enumerate(self.up_block_types):
            num = layers[i] + 1
            res, skips = skips[-num:], skips[:-num]
            last = i == n - 1
            # the next skip's size: exact 2x normally; differs when H or W is not divisible by 2^(n-1)
            size = None if last else skips[-1].shape[1:3]
            cls = _UP[kind]
            # diffusers reverses the head counts for the up blocks but not attention_head_dim (the head width
            # of the Kandinsky blocks): up block i takes the width of down block i
            block = cls(out_channels=channels[i], num_layers=num, transformer_layers=t_layers[i],
                        only_cross_attention=only_cross[i], add_upsample=not last, name=f"up_blocks.{i}",
                        **self._block_kwargs(cls, heads[i], self.attention_heads[i]), **common)
            x = block(x, res, emb, context, attention_bias_fn, size)

        x = GroupNorm(self.norm_num_groups, epsilon=self.norm_eps, dtype=dt, name="conv_norm_out")(x)
        x = activation(self.act_fn)(x)
        return conv2d(self.out_channels, self.conv_out_kernel, dtype=dt, name="conv_out")(x)
