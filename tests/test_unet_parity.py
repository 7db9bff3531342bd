"""Parity of t2ijax's UNet2DConditionModel with diffusers' PyTorch model, loaded through `load_unet`.

Tiny random float32 configs are saved with `save_pretrained`; every parameter is perturbed with a
seeded normal (diffusers zero-inits some convs) so that each layer matters.
Criterion: max|ours - ref| <= 1e-4 * max|ref|.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusers
import torch

from t2ijax.models.attention import MASK_VALUE
from t2ijax.models.unet import UNet2DConditionModel, timestep_embedding
from t2ijax.weights import load_unet
from t2ijax.weights.torch_layout import params_to_state_dict

SD1 = dict(  # SD 1.x structure: conv proj_in/out, int head count
    sample_size=16, block_out_channels=[32, 64, 64], layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    attention_head_dim=4, cross_attention_dim=32, norm_num_groups=8)
SD2 = dict(  # SD 2.x structure: linear projections, per-block heads, upcast attention, 2 transformer layers
    # (plus only_cross_attention in the first down / last up block, and a text_proj encoder_hid_proj 40 -> 48)
    sample_size=16, block_out_channels=[32, 64, 64], layers_per_block=1, only_cross_attention=[True, False, False],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    attention_head_dim=[2, 4, 8], cross_attention_dim=48, norm_num_groups=16, use_linear_projection=True,
    upcast_attention=True, transformer_layers_per_block=2, flip_sin_to_cos=False, freq_shift=1, encoder_hid_dim=40)
KANDINSKY = dict(  # Kandinsky 2.2 decoder conditioning: image_embeds -> context tokens and time embedding
    sample_size=16, block_out_channels=[32, 64], layers_per_block=1, out_channels=8,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    attention_head_dim=4, cross_attention_dim=32, norm_num_groups=8, encoder_hid_dim=24,
    encoder_hid_dim_type="image_proj", addition_embed_type="image", resnet_time_scale_shift="scale_shift")

# (config, latent H, W, context length). SD2's H=10 is not a multiple of 2^(blocks-1) = 4: this
# exercises diffusers' forward_upsample_size path (10 -> 5 -> 3 -> 5 -> 10).
CASES = {"sd1": (SD1, 16, 16, 7), "sd2": (SD2, 10, 12, 9), "kandinsky": (KANDINSKY, 16, 16, 0)}


def perturb(model, seed=0, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


_BUILT = {}  # config name -> (name, module, params, inputs, reference output, jitted apply)


def nhwc(t):
    return jnp.asarray(t.numpy().transpose(0, 2, 3, 1))


def _build(name, tmp_path_factory):
    if name not in _BUILT:
        _BUILT[name] = _make_case(name, tmp_path_factory)
    return _BUILT[name]


def _make_case(name, tmp_path_factory):
    cfg, h, w, length = CASES[name]
    torch.manual_seed(0)
    ref_model = perturb(diffusers.UNet2DConditionModel(**cfg))
    path = tmp_path_factory.mktemp(name)
    ref_model.save_pretrained(path)
    module, params = load_unet(path)
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, cfg.get("in_channels", 4), h, w, generator=g)
    timesteps = torch.tensor([3, 751])
    image = cfg.get("encoder_hid_dim_type") == "image_proj"
    width = cfg["encoder_hid_dim"] if "encoder_hid_dim" in cfg and not image else cfg["cross_attention_dim"]
    context = torch.randn(2, max(length, 1), width, generator=g)
    added = {"image_embeds": torch.randn(2, cfg["encoder_hid_dim"], generator=g)} if image else None
    with torch.no_grad():
        ref = ref_model(sample, timesteps, context, added_cond_kwargs=added).sample.numpy()
    inputs = (nhwc(sample), jnp.asarray(timesteps.numpy()), jnp.asarray(context.numpy()),
              None if added is None else {k: jnp.asarray(v.numpy()) for k, v in added.items()})
    fn = jax.jit(module.apply, static_argnames=("attention_bias_fn",))
    return name, module, params, inputs, ref, fn


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory)


def test_forward_matches_diffusers(case):
    name, module, params, (sample, t, context, added), ref, fn = case
    out = np.asarray(fn({"params": params}, sample, t, context, added_cond_kwargs=added))
    out = out.transpose(0, 3, 1, 2)
    assert out.shape == ref.shape
    err, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
    print(f"\nU-Net parity [{name}]: max|ours-ref| = {err:.3e}, max|ref| = {scale:.3e}, ratio = {err / scale:.3e}")
    assert err <= 1e-4 * scale


def test_params_carry_logical_axes(case):
    _, module, _, (sample, t, context, added), _, _ = case
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), sample, t, context, added_cond_kwargs=added))
    leaves = jax.tree_util.tree_leaves(boxed["params"], is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
                                       or hasattr(x, "names"))
    unnamed = [leaf for leaf in leaves if not hasattr(leaf, "names")]
    assert not unnamed and len(leaves) > 50


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return _build("sd1", tmp_path_factory)


@pytest.fixture(scope="module")
def kandinsky(tmp_path_factory):
    return _build("kandinsky", tmp_path_factory)


def test_cross_attention_bias_hook_equals_dropping_keys(sd1):
    """A MASK_VALUE bias on the last 3 text tokens gives the output of a context without them."""
    _, module, params, (sample, t, context, _), ref, fn = sd1
    length = context.shape[1]

    def drop_last_three(lq, lk):
        assert lk == length
        return jnp.where(jnp.arange(lk) >= lk - 3, MASK_VALUE, 0.0)[None, None, None, :]

    masked = fn({"params": params}, sample, t, context, attention_bias_fn=drop_last_three)
    dropped = fn({"params": params}, sample, t, context[:, :-3])
    scale = float(jnp.abs(dropped).max())
    err = float(jnp.abs(masked - dropped).max())
    print(f"\nbias hook: max|masked - dropped| = {err:.3e} (scale {scale:.3e})")
    assert err <= 1e-5 * scale
    full = ref.transpose(0, 2, 3, 1)
    assert float(np.abs(full - np.asarray(dropped)).max()) > 1e-3 * scale  # the dropped tokens did matter


def test_bias_hook_reaches_every_cross_attention(case):
    """The hook is called once per cross-attention layer, with the query length of that resolution."""
    name, module, params, (sample, t, context, added), _, _ = case
    calls = []

    def record(lq, lk):
        calls.append((lq, lk))
        return None

    jax.eval_shape(lambda p: module.apply({"params": p}, sample, t, context, added_cond_kwargs=added,
                                          attention_bias_fn=record), params)
    paths = [tuple(str(k.key) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    n_blocks = len(module.block_out_channels)
    only_cross = {f"down_blocks.{i}" for i, o in enumerate(module.only_cross_attention) if o}
    only_cross |= {f"up_blocks.{n_blocks - 1 - i}" for i, o in enumerate(module.only_cross_attention) if o}
    text_attentions = {p[:p.index("attn2") + 1] for p in paths if "attn2" in p}
    text_attentions |= {p[:p.index("attn1") + 1] for p in paths if "attn1" in p and p[0] in only_cross}
    assert len(calls) == len(text_attentions) > 0
    h, w = sample.shape[1:3]
    allowed_lq = {h * w, -(-h // 2) * -(-w // 2), -(-h // 4) * -(-w // 4)}
    assert {lq for lq, _ in calls} <= allowed_lq
    assert {lk for _, lk in calls} == {32 if name == "kandinsky" else context.shape[1]}


def test_scalar_timestep_and_bfloat16_compute(kandinsky):
    """bfloat16 compute with a scalar timestep stays close to the float32 result at the same timestep."""
    _, module, params, (sample, _, context, added), _, fn = kandinsky
    ref = fn({"params": params}, sample, jnp.array([751, 751]), context, added_cond_kwargs=added)  # compiled already
    out = jax.jit(module.clone(dtype=jnp.bfloat16).apply)({"params": params}, sample, jnp.int32(751), context,
                                                           added_cond_kwargs=added)
    assert out.dtype == jnp.bfloat16
    rel = float(jnp.abs(out.astype(jnp.float32) - ref).max() / jnp.abs(ref).max())
    print(f"\nbfloat16 compute (scalar timestep): max|bf16 - f32| / max|f32| = {rel:.3e}")
    assert rel < 0.05


def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    t = np.array([0, 1, 17, 999], np.int64)
    for dim, flip, shift in ((32, True, 0), (33, False, 1)):
        ref = get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
        ours = timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
        np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=2e-4)


def test_remat_gradients_match_pytorch(kandinsky):
    """Backward parity with remat on: d(mean(out^2))/d(params) vs torch autograd (bias hook passed through)."""
    _, module, params, (sample, t, context, added), _, _ = kandinsky
    cfg = CASES["kandinsky"][0]
    torch.manual_seed(0)
    ref_model = perturb(diffusers.UNet2DConditionModel(**cfg))
    x = torch.from_numpy(np.asarray(sample).transpose(0, 3, 1, 2).copy())
    ref_out = ref_model(x, torch.from_numpy(np.array(t)), torch.from_numpy(np.array(context)),
                        added_cond_kwargs={k: torch.from_numpy(np.array(v)) for k, v in added.items()}).sample
    (ref_out ** 2).mean().backward()
    ref_grads = {k: p.grad.numpy() for k, p in ref_model.named_parameters()}

    def zero_bias(lq, lk):
        return jnp.zeros((1, 1, 1, lk))

    def loss(p):
        out = module.clone(remat=True).apply({"params": p}, sample, t, context, added_cond_kwargs=added,
                                             attention_bias_fn=zero_bias)
        return jnp.mean(out ** 2)

    grads = params_to_state_dict(jax.jit(jax.grad(loss))(params))
    assert sorted(grads) == sorted(ref_grads)
    scale = max(float(np.abs(g).max()) for g in ref_grads.values())
    err = max(float(np.abs(grads[k] - ref_grads[k]).max()) for k in grads)
    print(f"\nremat gradient parity: max|ours-ref| = {err:.3e}, max|ref| = {scale:.3e}, ratio = {err / scale:.3e}")
    assert err <= 1e-4 * scale


def test_input_errors_are_clear():
    module = UNet2DConditionModel.from_config(SD1)
    sample, t, context, _ = module.example_inputs(batch=2, context_length=5)
    with pytest.raises(ValueError, match="NHWC with 4 channels"):
        jax.eval_shape(lambda: module.init(jax.random.key(0), sample[..., :3], t, context))
    with pytest.raises(ValueError, match=r"encoder_hidden_states must have shape \(2, L, 32\)"):
        jax.eval_shape(lambda: module.init(jax.random.key(0), sample, t, context[..., :16]))
    with pytest.raises(ValueError, match="timesteps must be a scalar or shape"):
        jax.eval_shape(lambda: module.init(jax.random.key(0), sample, jnp.zeros((3,)), context))
    kand = UNet2DConditionModel.from_config(KANDINSKY)
    with pytest.raises(ValueError, match="image_embeds"):
        jax.eval_shape(lambda: kand.init(jax.random.key(0), sample, t, context))
