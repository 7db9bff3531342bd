"""Kandinsky 2.2's decoder U-Net blocks and MoVQ image decoder against diffusers' PyTorch classes.

Tiny random float32 models are saved with `save_pretrained`, every parameter perturbed with a seeded
normal (diffusers zero-inits some layers), and loaded through `load_unet` / `load_movq`.
Criterion: max|ours - ref| <= 1e-4 * max|ref|.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import diffusers
import torch

from t2ijax.models.attention import MASK_VALUE
from t2ijax.models.movq import VQModel
from t2ijax.models.unet import UNet2DConditionModel
from t2ijax.weights import load_movq, load_unet, save_movq, save_unet
from t2ijax.weights.torch_layout import params_to_state_dict

STEM = "diffusion_pytorch_model"

# The released decoder's structure (ResnetDownsample, SimpleCrossAttn x n, UNetMidBlock2DSimpleCrossAttn,
# image_proj context, image time embedding, scale_shift resnets), tiny: heads of width 16.
KANDINSKY22 = dict(
    sample_size=16, in_channels=4, out_channels=8, block_out_channels=[32, 32, 64], layers_per_block=1,
    down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"],
    up_block_types=["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=16, cross_attention_dim=32,
    norm_num_groups=8, encoder_hid_dim=24, encoder_hid_dim_type="image_proj", addition_embed_type="image",
    resnet_time_scale_shift="scale_shift")
# The options diffusers honours in these blocks, with a text context and a Transformer2DModel block mixed in:
# attention_head_dim is the head width in the SimpleCrossAttn blocks (8 in down 0; 4 in up 1, as diffusers does
# not reverse it for the up blocks) and the head count (4) in the others.
VARIANTS = dict(
    sample_size=8, block_out_channels=[32, 64], layers_per_block=1,
    down_block_types=["SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D"],
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=[8, 4], cross_attention_dim=24,
    norm_num_groups=8, only_cross_attention=[True, False], mid_block_only_cross_attention=True,
    resnet_skip_time_act=True, resnet_out_scale_factor=1.5, mid_block_scale_factor=0.75, norm_eps=1e-6)

# Smallest model through both resnet resamplers and both added-KV attention kinds, for the gradient check.
GRAD = dict(
    sample_size=8, block_out_channels=[32, 32], layers_per_block=1, attention_head_dim=16, cross_attention_dim=16,
    down_block_types=["SimpleCrossAttnDownBlock2D", "ResnetDownsampleBlock2D"],
    up_block_types=["ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D"], only_cross_attention=[False, True],
    mid_block_type=None, norm_num_groups=8, resnet_time_scale_shift="scale_shift")  # mid: forward-checked above

MOVQ = dict(  # movq/config.json's structure, tiny (SpatialNorm has a fixed 32 groups: channels of 32k)
    in_channels=3, out_channels=3, latent_channels=4, vq_embed_dim=4, num_vq_embeddings=64, norm_type="spatial",
    block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=8, sample_size=16,
    down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"])


def perturb(model, seed=0, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def nhwc(t):
    return jnp.asarray(t.numpy().transpose(0, 2, 3, 1))


def nchw(a):
    return np.asarray(a).transpose(0, 3, 1, 2)


def report(what, ours, ref):
    err, scale = float(np.abs(ours - ref).max()), float(np.abs(ref).max())
    print(f"\n{what}: max|ours-ref| = {err:.3e}, max|ref| = {scale:.3e}, ratio = {err / scale:.3e}")
    assert ours.shape == ref.shape
    assert err <= 1e-4 * scale


def _unet_case(cfg, tmp_path_factory, name, context_length=None):
    torch.manual_seed(0)
    ref = perturb(diffusers.UNet2DConditionModel(**cfg))
    path = tmp_path_factory.mktemp(name)
    ref.save_pretrained(path)
    module, params = load_unet(path)
    g = torch.Generator().manual_seed(1)
    size = cfg["sample_size"]
    sample = torch.randn(2, cfg.get("in_channels", 4), size, size, generator=g)
    t = torch.tensor([3, 751])
    if context_length is None:
        context, added = None, {"image_embeds": torch.randn(2, cfg["encoder_hid_dim"], generator=g)}
    else:
        context, added = torch.randn(2, context_length, cfg["cross_attention_dim"], generator=g), None
    with torch.no_grad():
        want = ref(sample, t, context, added_cond_kwargs=added).sample.numpy()
    inputs = (nhwc(sample), jnp.asarray(t.numpy()), None if context is None else jnp.asarray(context.numpy()),
              None if added is None else {k: jnp.asarray(v.numpy()) for k, v in added.items()})
    return dict(ref=ref, path=path, module=module, params=params, inputs=inputs, want=want,
                fn=jax.jit(module.apply, static_argnames=("attention_bias_fn",)))


@pytest.fixture(scope="module")
def kandinsky(tmp_path_factory):
    return _unet_case(KANDINSKY22, tmp_path_factory, "kandinsky22")


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    return _unet_case(VARIANTS, tmp_path_factory, "variants", context_length=7)


# ------------------------------------------------------------------ U-Net


def test_kandinsky22_unet_matches_diffusers(kandinsky):
    sample, t, _, added = kandinsky["inputs"]
    out = kandinsky["fn"]({"params": kandinsky["params"]}, sample, t, None, added_cond_kwargs=added)
    report("Kandinsky 2.2 U-Net", nchw(out), kandinsky["want"])


def test_simple_block_options_match_diffusers(variants):
    """only_cross_attention per block, mid_block_only_cross_attention, resnet_skip_time_act,
    resnet_out_scale_factor, mid_block_scale_factor and mixed head semantics."""
    module = variants["module"]
    assert module.mid_block_only_cross_attention and module.resnet_skip_time_act
    sample, t, context, _ = variants["inputs"]
    out = variants["fn"]({"params": variants["params"]}, sample, t, context)
    report("SimpleCrossAttn options U-Net", nchw(out), variants["want"])


def test_mid_block_only_cross_attention_follows_a_boolean_only_cross_attention():
    both = UNet2DConditionModel.from_config({**VARIANTS, "only_cross_attention": True,
                                             "mid_block_only_cross_attention": None})
    assert both.mid_block_only_cross_attention and both.only_cross_attention == (True, True)
    listed = UNet2DConditionModel.from_config({**VARIANTS, "mid_block_only_cross_attention": None})
    assert not listed.mid_block_only_cross_attention


def test_bias_hook_masks_context_keys_only(variants):
    """A MASK_VALUE bias on the last 3 tokens equals dropping them, in attentions with and without self keys;
    the hook is called once per attention over the context, with the context length."""
    module, params, fn = variants["module"], variants["params"], variants["fn"]
    sample, t, context, _ = variants["inputs"]
    length = context.shape[1]
    calls = []

    def drop_last_three(lq, lk):
        calls.append(lk)
        return jnp.where(jnp.arange(lk) >= lk - 3, MASK_VALUE, 0.0)[None, None, None, :]

    masked = fn({"params": params}, sample, t, context, attention_bias_fn=drop_last_three)
    dropped = fn({"params": params}, sample, t, context[:, :-3])
    scale = float(jnp.abs(dropped).max())
    err = float(jnp.abs(masked - dropped).max())
    print(f"\nbias hook: max|masked - dropped| = {err:.3e} (scale {scale:.3e})")
    assert err <= 1e-5 * scale
    assert float(np.abs(variants["want"] - nchw(dropped)).max()) > 1e-3 * scale  # the dropped tokens did matter
    # down 0 (1 added-KV attention), down 1 + up 0 (3 transformer attn2), mid (1), up 1 (2 added-KV)
    assert calls == [length] * 7


def test_params_carry_logical_axes(kandinsky):
    sample, t, _, added = kandinsky["inputs"]
    module = kandinsky["module"]
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), sample, t, None, added_cond_kwargs=added))
    leaves = jax.tree_util.tree_leaves(boxed["params"], is_leaf=lambda x: hasattr(x, "names"))
    assert leaves and all(hasattr(leaf, "names") for leaf in leaves)


def test_unet_export_round_trip_is_bit_exact_and_loads_in_diffusers(kandinsky, tmp_path):
    module, params, path = kandinsky["module"], kandinsky["params"], kandinsky["path"]
    save_unet(module, params, tmp_path)
    a, b = load_file(path / f"{STEM}.safetensors"), load_file(tmp_path / f"{STEM}.safetensors")
    assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
    with open(path / "config.json") as f, open(tmp_path / "config.json") as g:
        assert json.load(f) == json.load(g)
    ours = diffusers.UNet2DConditionModel.from_pretrained(tmp_path)  # strict: raises on a missing key
    ref = kandinsky["ref"].state_dict()
    assert all(torch.equal(ref[k], v) for k, v in ours.state_dict().items())
    again, params2 = load_unet(tmp_path)
    assert again == module
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), params, params2)


def test_remat_gradients_match_pytorch(tmp_path_factory):
    """Backward through the resnet resamplers and added-KV attentions, rematerialised, vs torch autograd."""
    case = _unet_case(GRAD, tmp_path_factory, "grad", context_length=5)
    module, params, ref = case["module"], case["params"], case["ref"]
    sample, t, context, _ = case["inputs"]
    out = ref(torch.from_numpy(nchw(sample).copy()), torch.from_numpy(np.asarray(t)),
              torch.from_numpy(np.asarray(context))).sample
    (out ** 2).mean().backward()

    def loss(p):
        return jnp.mean(module.clone(remat=True).apply({"params": p}, sample, t, context) ** 2)

    grads = params_to_state_dict(jax.jit(jax.grad(loss))(params))
    ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    assert sorted(grads) == sorted(ref_grads)
    scale = max(float(np.abs(g).max()) for g in ref_grads.values())
    err = max(float(np.abs(grads[k] - ref_grads[k]).max()) for k in grads)
    print(f"\nremat gradient parity: max|ours-ref| = {err:.3e}, max|ref| = {scale:.3e}, ratio = {err / scale:.3e}")
    assert err <= 1e-4 * scale


def test_unsupported_shapes_and_values_are_named(kandinsky):
    module = kandinsky["module"]
    sample, t, _, added = module.example_inputs(batch=1)
    odd = jnp.zeros((1, 12, 12, 4))  # 12 -> 6 -> 3 -> 6 fine; 10 -> 5 -> 2 (pooled) -> 4 != 5
    jax.eval_shape(lambda: module.init(jax.random.key(0), odd, t, None, added_cond_kwargs=added))
    with pytest.raises(ValueError, match="upsamples by exactly 2"):
        jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 10, 10, 4)), t, None,
                                           added_cond_kwargs=added))
    bad = UNet2DConditionModel.from_config({**KANDINSKY22, "attention_head_dim": 24})
    with pytest.raises(ValueError, match="attention_head_dim"):
        jax.eval_shape(lambda: bad.init(jax.random.key(0), sample, t, None, added_cond_kwargs=added))
    with pytest.raises(ValueError, match="mid_block_type='UNetMidBlock2D'"):
        UNet2DConditionModel.from_config({**KANDINSKY22, "mid_block_type": "UNetMidBlock2D"})
    with pytest.raises(ValueError, match="cross_attention_norm='group_norm'"):
        UNet2DConditionModel.from_config({**KANDINSKY22, "cross_attention_norm": "group_norm"})


# ------------------------------------------------------------------ MoVQ


@pytest.fixture(scope="module")
def movq(tmp_path_factory):
    torch.manual_seed(0)
    ref = perturb(diffusers.VQModel(**MOVQ))
    path = tmp_path_factory.mktemp("movq")
    ref.save_pretrained(path)
    module, params = load_movq(path)
    return ref, path, module, params


@functools.lru_cache(maxsize=None)
def _jitted(module, method, **kwargs):
    return jax.jit(lambda p, x: module.apply({"params": p}, x, method=method, **kwargs))


def _apply(module, method, **kwargs):
    return _jitted(module, method, **kwargs)


def test_movq_decode_as_kandinsky_matches_diffusers(movq):
    """The pipeline's `movq.decode(latents, force_not_quantize=True)`."""
    ref, _, module, params = movq
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref.decode(latents, force_not_quantize=True).sample.numpy()
    out = _apply(module, "decode", force_not_quantize=True)(params, nhwc(latents))
    assert out.shape == (2, 16, 16, 3)
    report("MoVQ decode (force_not_quantize)", nchw(out), want)


def test_movq_encode_quantize_and_quantized_decode_match_diffusers(movq):
    ref, _, module, params = movq
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        h = ref.encode(images).latents
        z_q, loss, (_, _, indices) = ref.quantize(h)
        decoded = ref.decode(h)
    ours_h = _apply(module, "encode")(params, nhwc(images))
    report("MoVQ encode", nchw(ours_h), h.numpy())
    # quantise diffusers' latents, so that a near tie cannot pick another code on a 1e-7 difference
    ours_q, ours_loss, ours_idx = _apply(module, "quantize_latents")(params, nhwc(h))
    np.testing.assert_array_equal(np.asarray(ours_idx).reshape(-1), indices.numpy().reshape(-1))
    assert len(np.unique(indices.numpy())) > 8  # several codes in play
    np.testing.assert_allclose(nchw(ours_q), z_q.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(float(ours_loss), float(loss), rtol=1e-5)
    out = _apply(module, "decode")(params, nhwc(h))
    report("MoVQ decode (quantised)", nchw(out), decoded.sample.numpy())
    recon, recon_loss = jax.jit(lambda p, x: module.apply({"params": p}, x))(params, nhwc(images))
    with torch.no_grad():
        fwd = ref(images)
    report("MoVQ forward", nchw(recon), fwd.sample.numpy())
    np.testing.assert_allclose(float(recon_loss), float(fwd.commit_loss), rtol=1e-4)


def test_movq_decode_from_codebook_indices(movq):
    """lookup_from_codebook=True: decode(indices, force_not_quantize=True, shape) as diffusers."""
    ref, _, module, params = movq
    lookup_ref = diffusers.VQModel(**{**MOVQ, "lookup_from_codebook": True}).eval()
    lookup_ref.load_state_dict(ref.state_dict())
    indices = torch.randint(0, MOVQ["num_vq_embeddings"], (2 * 8 * 8,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = lookup_ref.decode(indices, force_not_quantize=True, shape=(2, 8, 8, 4)).sample.numpy()
    lookup = module.clone(lookup_from_codebook=True)
    flat = jax.jit(lambda p, i: lookup.apply({"params": p}, i, force_not_quantize=True, shape=(2, 8, 8, 4),
                                             method="decode"))(params, jnp.asarray(indices.numpy()))
    report("MoVQ decode (codebook indices)", nchw(flat), want)
    grid = _apply(lookup, "decode", force_not_quantize=True)(params, jnp.asarray(indices.numpy()).reshape(2, 8, 8))
    np.testing.assert_array_equal(np.asarray(grid), np.asarray(flat))


def test_movq_force_upcast_computes_in_float32(movq):
    _, _, module, params = movq
    latents = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))  # the shape compiled above
    f32 = _apply(module, "decode", force_not_quantize=True)(params, latents)
    upcast = module.clone(dtype=jnp.bfloat16, force_upcast=True)
    out = _apply(upcast, "decode", force_not_quantize=True)(params, latents)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), np.asarray(f32))


def test_movq_export_round_trip_is_bit_exact_and_loads_in_diffusers(movq, tmp_path):
    ref, path, module, params = movq
    save_movq(module, params, tmp_path)
    a, b = load_file(path / f"{STEM}.safetensors"), load_file(tmp_path / f"{STEM}.safetensors")
    assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
    ours = diffusers.VQModel.from_pretrained(tmp_path)
    want = ref.state_dict()
    assert all(torch.equal(want[k], v) for k, v in ours.state_dict().items())
    again, params2 = load_movq(tmp_path)
    assert again == module
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), params, params2)
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 2, 2, 3))))
    leaves = jax.tree_util.tree_leaves(boxed["params"], is_leaf=lambda x: hasattr(x, "names"))
    assert leaves and all(hasattr(leaf, "names") for leaf in leaves)


def test_movq_config_errors_are_named():
    with pytest.raises(ValueError, match="vq_embed_dim"):
        VQModel.from_config({**MOVQ, "vq_embed_dim": 8})
    with pytest.raises(ValueError, match="up_block_types"):
        VQModel.from_config({**MOVQ, "up_block_types": ["UpBlock2D", "UpDecoderBlock2D"]})
    with pytest.raises(ValueError, match="norm_type='ada_group'"):
        VQModel.from_config({**MOVQ, "norm_type": "ada_group"})
    with pytest.raises(ValueError, match="does not know.*num_res_blocks"):
        VQModel.from_config({**MOVQ, "num_res_blocks": 2})
    module = VQModel.from_config({**MOVQ, "norm_type": "group"})  # the plain VQ-GAN decoder
    with pytest.raises(ValueError, match="NHWC latents with 4 channels"):
        jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 4, 8, 8)), method="decode"))
