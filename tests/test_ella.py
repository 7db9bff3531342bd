"""ELLA TSC: exact size, released key set, parity with a PyTorch reference, weight round trips, wrapper."""

import functools
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as tnn
from diffusers.models.embeddings import TimestepEmbedding as TorchTimestepEmbedding
from diffusers.models.embeddings import Timesteps as TorchTimesteps
from flax import linen as nn
from safetensors.numpy import load_file
from safetensors.torch import save_file as torch_save_file

from t2ijax.diffusion import cfg_denoise
from t2ijax.models.ella import ELLA, ella_context, ella_denoise, ella_guidance_pair, timestep_embedding
from t2ijax.models.layers import Dense, abstract_init
from t2ijax.weights import load_ella, save_ella
from t2ijax.weights.ella import ella_state_dict
from t2ijax.weights.torch_layout import WeightLoadError


# ------------------------------------------------------------------------------------------------
# PyTorch reference: a faithful re-implementation of TencentQQGYLab/ELLA model.py (release 4e477e9),
# with the pre-release ablation branches (norm_type "ln" / "ada_norm_zero", b7c2202) kept.

class RefAdaLayerNorm(tnn.Module):
    def __init__(self, embedding_dim, time_embedding_dim=None):
        super().__init__()
        time_embedding_dim = time_embedding_dim or embedding_dim
        self.silu = tnn.SiLU()
        self.linear = tnn.Linear(time_embedding_dim, 2 * embedding_dim, bias=True)
        tnn.init.zeros_(self.linear.weight)
        tnn.init.zeros_(self.linear.bias)
        self.norm = tnn.LayerNorm(embedding_dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x, timestep_embedding):
        emb = self.linear(self.silu(timestep_embedding))
        shift, scale = emb.view(len(x), 1, -1).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class RefSquaredReLU(tnn.Module):
    def forward(self, x):
        return torch.square(torch.relu(x))


class RefPerceiverAttentionBlock(tnn.Module):
    def __init__(self, d_model, n_heads, norm_type="ada_norm", time_embedding_dim=None):
        super().__init__()
        self.attn = tnn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.mlp = tnn.Sequential(OrderedDict([("c_fc", tnn.Linear(d_model, d_model * 4)),
                                               ("sq_relu", RefSquaredReLU()),
                                               ("c_proj", tnn.Linear(d_model * 4, d_model))]))
        self.norm_type = norm_type
        if norm_type == "ln":
            self.ln_1, self.ln_2, self.ln_ff = (tnn.LayerNorm(d_model) for _ in range(3))
        else:
            self.ln_1, self.ln_2, self.ln_ff = (RefAdaLayerNorm(d_model, time_embedding_dim) for _ in range(3))
        if norm_type == "ada_norm_zero":
            self.gate_linear = tnn.Linear(time_embedding_dim or d_model, 2 * d_model, bias=True)
            tnn.init.zeros_(self.gate_linear.bias)

    def attention(self, q, kv):
        return self.attn(q, kv, kv, need_weights=False)[0]

    def forward(self, x, latents, timestep_embedding=None):
        if self.norm_type == "ln":
            latents = latents + self.attention(q=self.ln_1(latents),
                                               kv=torch.cat([self.ln_1(latents), self.ln_2(x)], dim=1))
            return latents + self.mlp(self.ln_ff(latents))
        g1 = g2 = 1.0
        if self.norm_type == "ada_norm_zero":
            g1, g2 = self.gate_linear(torch.nn.functional.silu(timestep_embedding)).view(len(x), 1, -1).chunk(2, -1)
        normed = self.ln_1(latents, timestep_embedding)
        latents = latents + g1 * self.attention(q=normed,
                                                kv=torch.cat([normed, self.ln_2(x, timestep_embedding)], dim=1))
        return latents + g2 * self.mlp(self.ln_ff(latents, timestep_embedding))


class RefPerceiverResampler(tnn.Module):
    def __init__(self, width, layers, heads, num_latents, input_dim, norm_type, time_embedding_dim,
                 time_aware_query=True):
        super().__init__()
        self.latents = tnn.Parameter(width ** -0.5 * torch.randn(num_latents, width))
        self.time_aware_query = time_aware_query
        if time_aware_query:
            self.time_aware_linear = tnn.Linear(time_embedding_dim or width, width, bias=True)
        self.proj_in = tnn.Linear(input_dim, width)
        self.perceiver_blocks = tnn.Sequential(*[
            RefPerceiverAttentionBlock(width, heads, norm_type, time_embedding_dim) for _ in range(layers)])

    def forward(self, x, timestep_embedding=None):
        latents = self.latents.unsqueeze(dim=0).repeat(len(x), 1, 1)
        if self.time_aware_query:
            latents = latents + self.time_aware_linear(torch.nn.functional.silu(timestep_embedding))
        x = self.proj_in(x)
        for block in self.perceiver_blocks:
            latents = block(x, latents, timestep_embedding=timestep_embedding)
        return latents


class RefELLA(tnn.Module):
    def __init__(self, time_channel=320, time_embed_dim=768, width=768, layers=6, heads=8, num_latents=64,
                 input_dim=2048, norm_type="ada_norm", time_aware_query=True):
        super().__init__()
        self.use_time = norm_type != "ln" or time_aware_query
        if self.use_time:
            self.position = TorchTimesteps(time_channel, flip_sin_to_cos=True, downscale_freq_shift=0)
            self.time_embedding = TorchTimestepEmbedding(in_channels=time_channel, time_embed_dim=time_embed_dim,
                                                         act_fn="silu")
        self.connector = RefPerceiverResampler(width, layers, heads, num_latents, input_dim, norm_type,
                                               time_embed_dim, time_aware_query)

    def forward(self, text_encode_features, timesteps):
        t_emb = None
        if self.use_time:
            feats = self.position(timesteps.view(-1)).to(dtype=text_encode_features.dtype)
            feats = feats.unsqueeze(dim=1) if feats.ndim == 2 else feats
            t_emb = self.time_embedding(feats.expand(len(text_encode_features), -1, -1))
        return self.connector(text_encode_features, timestep_embedding=t_emb)


# ------------------------------------------------------------------------------------------------

TINY = dict(time_channel=32, time_embed_dim=40, width=64, layers=2, heads=4, num_latents=8, input_dim=48)
VARIANTS = {
    "ada_norm": dict(norm_type="ada_norm"),
    "ada_norm_zero": dict(norm_type="ada_norm_zero"),
    "ln_no_time": dict(norm_type="ln", time_aware_query=False),
    "ln_time_query": dict(norm_type="ln", time_aware_query=True),
}
B, N = 3, 10


def released_keys(layers=6):
    keys = ["time_embedding.linear_1.weight", "time_embedding.linear_1.bias", "time_embedding.linear_2.weight",
            "time_embedding.linear_2.bias", "connector.latents", "connector.time_aware_linear.weight",
            "connector.time_aware_linear.bias", "connector.proj_in.weight", "connector.proj_in.bias"]
    for i in range(layers):
        p = f"connector.perceiver_blocks.{i}."
        keys += [p + "attn.in_proj_weight", p + "attn.in_proj_bias", p + "attn.out_proj.weight",
                 p + "attn.out_proj.bias"]
        keys += [p + f"mlp.{m}.{w}" for m in ("c_fc", "c_proj") for w in ("weight", "bias")]
        keys += [p + f"{ln}.linear.{w}" for ln in ("ln_1", "ln_2", "ln_ff") for w in ("weight", "bias")]
    return set(keys)


def make_reference(variant, seed=0):
    torch.manual_seed(seed)
    ref = RefELLA(**TINY, **VARIANTS[variant]).eval()
    with torch.no_grad():  # the zero-initialised AdaLN / gate layers would make parity trivial: randomise all
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ref


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((B, N, TINY["input_dim"])).astype(np.float32)
    timesteps = np.array([0, 417, 999], np.int64)
    return feats, timesteps


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{variant: (torch reference, path of its state_dict saved with safetensors)}."""
    out = {}
    for name in VARIANTS:
        ref = make_reference(name)
        path = tmp_path_factory.mktemp(name) / "ella-tiny.safetensors"
        torch_save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
        out[name] = (ref, path)
    return out


@pytest.fixture(scope="module")
def loaded(checkpoints):
    return {name: load_ella(path, heads=TINY["heads"]) for name, (_, path) in checkpoints.items()}


@functools.lru_cache(maxsize=None)
def jitted_apply(module):
    """One compiled apply per (hashable, frozen) module config, shared by all tests."""
    return jax.jit(lambda p, x, t, m: module.apply({"params": p}, x, t, m))


# ------------------------------------------------------------------------------------------------ size / keys

def test_released_config_has_exact_parameter_count_and_key_set():
    module = ELLA()
    abstract, specs = abstract_init(module, jax.ShapeDtypeStruct((1, 128, 2048), jnp.float32),
                                    jax.ShapeDtypeStruct((1,), jnp.float32))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
    print(f"ELLA-SD1.5 TSC parameters: {count:,}")
    assert count == 66_820_608
    # every parameter carries logical axis names
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    assert len(spec_leaves) == len(jax.tree.leaves(abstract))
    assert all(any(a is not None for a in s) for s in spec_leaves)
    from t2ijax.weights.ella import pack_in_proj
    from t2ijax.weights.torch_layout import torch_key_map
    assert set(pack_in_proj({k: np.zeros(3) for k in torch_key_map(abstract)})) == released_keys(6)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(norm_type="ada_norm_zero"), 73_907_712),
    (dict(norm_type="ln", time_aware_query=False), 44_159_232),
    (dict(norm_type="ln", time_aware_query=False, layers=1), 8_712_192),
    (dict(connector_type="mlp"), 2_164_224),
])
def test_ablation_parameter_counts_match_paper_table6(kwargs, expected):
    abstract, _ = abstract_init(ELLA(**kwargs), jax.ShapeDtypeStruct((1, 4, 2048), jnp.float32),
                                jax.ShapeDtypeStruct((1,), jnp.float32))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract)) == expected


# ------------------------------------------------------------------------------------------------ parity

def test_timestep_embedding_matches_diffusers():
    t = torch.tensor([0, 1, 250, 999])
    ref = TorchTimesteps(320, flip_sin_to_cos=True, downscale_freq_shift=0)(t).numpy()
    ours = np.asarray(timestep_embedding(t.numpy(), 320))
    err = rel_err(ours, ref)
    print(f"timestep embedding rel err {err:.2e}")
    assert err <= 1e-4  # float32 t * freq near t = 999 carries ~6e-5 of rounding on both sides


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_with_torch_reference(variant, checkpoints, loaded, inputs):
    ref, _ = checkpoints[variant]
    module, params = loaded[variant]
    assert module.norm_type == VARIANTS[variant]["norm_type"] and module.layers == TINY["layers"]
    assert module.width == TINY["width"] and module.input_dim == TINY["input_dim"]
    feats, timesteps = inputs
    with torch.no_grad():
        want = ref(torch.from_numpy(feats), torch.from_numpy(timesteps)).numpy()
        want_scalar = ref(torch.from_numpy(feats), torch.tensor(500)).numpy()
    apply = jitted_apply(module)
    got = np.asarray(apply(params, feats, timesteps, None))
    got_scalar = np.asarray(apply(params, feats, jnp.asarray(500), None))
    assert got.shape == (B, TINY["num_latents"], TINY["width"])
    err, err_scalar = rel_err(got, want), rel_err(got_scalar, want_scalar)
    print(f"{variant}: max|ours-ref|/max|ref| = {err:.2e} (per-sample t), {err_scalar:.2e} (scalar t)")
    assert err <= 1e-4 and err_scalar <= 1e-4
    if variant != "ln_no_time":
        assert np.max(np.abs(got[0] - got_scalar[0])) > 1e-4  # the output does depend on the timestep


def test_flexible_length_mask_equals_per_sample_slicing(checkpoints, loaded, inputs):
    """Flexible mode: the reference runs each sample on its unpadded features; ours masks the pad positions."""
    ref, _ = checkpoints["ada_norm"]
    module, params = loaded["ada_norm"]
    feats, timesteps = inputs
    lengths = np.array([10, 1, 6])
    mask = np.arange(N)[None, :] < lengths[:, None]
    padded = np.where(mask[..., None], feats, 0.0).astype(np.float32)
    with torch.no_grad():
        want = np.concatenate([ref(torch.from_numpy(feats[i:i + 1, :n]), torch.from_numpy(timesteps[i:i + 1])).numpy()
                               for i, n in enumerate(lengths)])
    got = np.asarray(jitted_apply(module)(params, padded, timesteps, mask))
    err = rel_err(got, want)
    print(f"flexible-length (masked) vs per-sample sliced reference: {err:.2e}")
    assert err <= 1e-4
    # fixed mode (no mask) differs: there the TSC attends to the pad positions, as released
    unmasked = np.asarray(jitted_apply(module)(params, padded, timesteps, None))
    assert np.max(np.abs(unmasked[1] - want[1])) > 1e-3


# ------------------------------------------------------------------------------------------------ weights I/O

def test_round_trip_is_bit_exact(checkpoints, loaded, tmp_path):
    for variant, (_, path) in checkpoints.items():
        module, params = loaded[variant]
        out = save_ella(module, params, tmp_path / f"{variant}.safetensors")
        a, b = load_file(str(path)), load_file(out)
        assert set(a) == set(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), k


def test_fp16_release_round_trip_and_folder_loading(checkpoints, tmp_path):
    ref, _ = checkpoints["ada_norm"]
    folder = tmp_path / "release"
    folder.mkdir()
    torch_save_file({k: v.half().contiguous() for k, v in ref.state_dict().items()},
                    str(folder / "ella-sd1.5-tsc-t5xl.safetensors"))
    module, params = load_ella(folder, heads=TINY["heads"])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    out = save_ella(module, params, tmp_path / "out", dtype="float16")
    a, b = load_file(str(folder / "ella-sd1.5-tsc-t5xl.safetensors")), load_file(out)
    assert set(a) == set(b) and all(b[k].dtype == np.float16 and a[k].tobytes() == b[k].tobytes() for k in a)
    # the exported file loads strictly into the PyTorch reference
    fresh = RefELLA(**TINY)
    fresh.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in b.items()}, strict=True)


def test_released_key_layout_of_export(loaded, tmp_path):
    module, params = loaded["ada_norm"]
    assert set(ella_state_dict(params)) == released_keys(TINY["layers"])


def test_mis_shaped_key_error_names_key_and_shapes(checkpoints, tmp_path):
    ref, _ = checkpoints["ada_norm"]
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    bad_key = "connector.perceiver_blocks.1.mlp.c_fc.weight"
    sd[bad_key] = torch.zeros(200, 64)
    path = tmp_path / "bad.safetensors"
    torch_save_file(sd, str(path))
    with pytest.raises(WeightLoadError) as e:
        load_ella(path, heads=TINY["heads"])
    msg = str(e.value)
    print(msg)
    assert bad_key in msg and "(200, 64)" in msg and "(256, 64)" in msg

    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    sd["connector.perceiver_blocks.0.attn.in_proj_weight"] = torch.zeros(190, 64)
    torch_save_file(sd, str(path))
    with pytest.raises(WeightLoadError, match=r"perceiver_blocks\.0\.attn\.in_proj_weight.*\(190, 64\)"):
        load_ella(path, heads=TINY["heads"])

    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    del sd["connector.perceiver_blocks.1.ln_ff.linear.bias"]
    sd["connector.extra.weight"] = torch.zeros(2)
    torch_save_file(sd, str(path))
    with pytest.raises(WeightLoadError) as e:
        load_ella(path, heads=TINY["heads"])
    assert "perceiver_blocks.1.ln_ff.linear.bias" in str(e.value) and "connector.extra.weight" in str(e.value)

    with pytest.raises(ValueError, match="divisible"):
        load_ella(checkpoints["ada_norm"][1], heads=5)


def test_bad_inputs_are_rejected_before_compute(loaded):
    module, params = loaded["ada_norm"]
    with pytest.raises(ValueError, match="channels"):
        module.apply({"params": params}, jnp.zeros((2, 5, 7)), jnp.zeros(2))
    with pytest.raises(ValueError, match="timesteps"):
        module.apply({"params": params}, jnp.zeros((2, 5, TINY["input_dim"])), jnp.zeros(3))
    with pytest.raises(ValueError, match="text_mask"):
        module.apply({"params": params}, jnp.zeros((2, 5, TINY["input_dim"])), jnp.zeros(2), jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="norm_type"):
        ELLA(**TINY, norm_type="rms").init(jax.random.key(0), jnp.zeros((1, 2, 48)), jnp.zeros(1))


# ------------------------------------------------------------------------------------------------ init

def test_init_follows_reference_zero_adaln():
    """At init every AdaLN is a plain LayerNorm, so t reaches the output only through the time-aware query."""
    module = ELLA(**TINY)
    feats = jnp.asarray(np.random.default_rng(1).standard_normal((B, N, TINY["input_dim"])), jnp.float32)
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), feats, jnp.zeros(B))["params"])
    conn = params["connector"]
    for i in range(TINY["layers"]):
        for ln in ("ln_1", "ln_2", "ln_ff"):
            lin = conn[f"perceiver_blocks.{i}"][ln]["linear"]
            assert not np.any(lin["kernel"]) and not np.any(lin["bias"])
        attn = conn[f"perceiver_blocks.{i}"]["attn"]
        assert all(not np.any(attn[p]["bias"]) for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
    width = TINY["width"]
    assert abs(float(np.std(conn["latents"])) * width ** 0.5 - 1.0) < 0.15
    bound = TINY["input_dim"] ** -0.5  # torch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    largest = float(np.max(np.abs(conn["proj_in"]["kernel"])))
    assert 0.9 * bound < largest <= bound
    apply = jitted_apply(module)
    t_a, t_b = jnp.full((B,), 3), jnp.full((B,), 900)
    assert np.max(np.abs(apply(params, feats, t_a, None) - apply(params, feats, t_b, None))) > 1e-4
    no_query = jax.tree.map(lambda x: x, params)
    no_query["connector"]["time_aware_linear"]["kernel"] = jnp.zeros_like(conn["time_aware_linear"]["kernel"])
    out_a, out_b = apply(no_query, feats, t_a, None), apply(no_query, feats, t_b, None)
    np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))


def test_mlp_connector_builds_and_runs():
    module = ELLA(connector_type="mlp", width=32, input_dim=24)
    feats = jnp.ones((2, 7, 24))
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), feats, jnp.zeros(2))["params"])
    out = jax.jit(module.apply)({"params": params}, feats, jnp.zeros(2))
    assert out.shape == (2, 7, 32) and np.all(np.isfinite(out))


# ------------------------------------------------------------------------------------------------ denoiser glue

class StandInUNet(nn.Module):
    """A tiny conditional denoiser with the U-Net contract: (x NHWC, timesteps, encoder_hidden_states) -> eps."""

    @nn.compact
    def __call__(self, x, t, context):
        pooled = Dense(x.shape[-1], ("embed", "mlp"), name="ctx")(jnp.mean(context, axis=1))
        t = jnp.broadcast_to(jnp.reshape(t, (-1,)), (x.shape[0],)).astype(x.dtype)
        return x * 0.5 + pooled[:, None, None, :] + 1e-3 * t[:, None, None, None]


@pytest.fixture(scope="module")
def standin(loaded):
    """(tsc, tsc_params, unet, unet_params, x, jitted tsc apply, jitted unet apply) shared by the glue tests."""
    tsc, tsc_params = loaded["ada_norm"]
    unet = StandInUNet()
    x = jnp.asarray(np.random.default_rng(2).standard_normal((B, 4, 4, 3)), jnp.float32)
    unet_params = unet.init(jax.random.key(1), x, jnp.zeros(B), jnp.zeros((B, 8, TINY["width"])))
    return tsc, tsc_params, unet, unet_params, x, jitted_apply(tsc), jax.jit(unet.apply)


def test_ella_denoise_recomputes_tsc_each_step(standin, inputs):
    tsc, tsc_params, unet, unet_params, x, tsc_apply, unet_apply = standin
    feats, _ = inputs
    step = jax.jit(lambda t, clip: ella_denoise(unet_apply, unet_params, tsc, tsc_params, x, t, feats,
                                                clip_context=clip))
    contexts = []
    for t in (999, 500):
        tt = jnp.full((B,), t)
        want_ctx = tsc_apply(tsc_params, feats, tt, None)
        contexts.append(want_ctx)
        np.testing.assert_allclose(step(tt, None), unet_apply(unet_params, x, tt, want_ctx), rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(contexts[0] - contexts[1])) > 1e-4  # the U-Net context changes with the step

    # ELLA + CLIP: the TSC output first, then the CLIP context along the sequence axis (ComfyUI-ELLA)
    clip = jnp.asarray(np.random.default_rng(3).standard_normal((B, 77, TINY["width"])), jnp.float32)
    tt = jnp.full((B,), 999)
    want = unet_apply(unet_params, x, tt, jnp.concatenate([contexts[0], clip], 1))
    np.testing.assert_allclose(step(tt, clip), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="clip_context"):
        ella_context(tsc, tsc_params, 10, feats, clip_context=jnp.ones((B, 77, 5)))


def test_ella_cfg_uses_empty_prompt_tsc(standin, inputs):
    tsc, tsc_params, unet, unet_params, x, tsc_apply, unet_apply = standin
    feats, _ = inputs
    scale = 7.5
    t = jnp.full((B,), 700)

    def manual(cond, cond_mask, uncond, uncond_mask):
        eps_c = unet_apply(unet_params, x, t, tsc_apply(tsc_params, cond, t, cond_mask))
        eps_u = unet_apply(unet_params, x, t, tsc_apply(tsc_params, uncond, t, uncond_mask))
        return eps_u + scale * (eps_c - eps_u)

    def denoise(params, xx, tt, c):
        return ella_denoise(unet_apply, params, tsc, tsc_params, xx, tt, c["features"], c["mask"])

    def ella_cfg_denoise(xx, tt, c, u, s, cm=None, um=None):  # the generic guidance on ELLA's (cond, uncond)
        tt = jnp.broadcast_to(jnp.reshape(jnp.asarray(tt), (-1,)), (xx.shape[0],))
        return cfg_denoise(denoise, unet_params, xx, tt, *ella_guidance_pair(c, u, cm, um), s)

    # fixed mode: T5("") padded to the same length; a batch-1 uncond is broadcast
    empty = feats[:1]
    cfg = jax.jit(lambda xx, tt, c, cm, u, um: ella_cfg_denoise(xx, tt, c, u, scale, cm, um))
    got = cfg(x, jnp.asarray(700), feats, None, empty, None)
    want = manual(feats, None, jnp.broadcast_to(empty, feats.shape), None)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    # flexible mode: a 1-token empty prompt and true-length cond features, padded to a common length and masked
    lengths = np.array([10, 3, 6])
    mask = np.arange(N)[None, :] < lengths[:, None]
    one_token = feats[:1, :1]
    got_flex = cfg(x, jnp.asarray(700), feats, mask, one_token, np.ones((1, 1), bool))
    padded_uncond = np.zeros_like(feats)
    padded_uncond[:, :1] = one_token
    uncond_mask = np.arange(N)[None, :] < np.ones((B, 1), int)
    want_flex = manual(feats, mask, padded_uncond, uncond_mask)
    np.testing.assert_allclose(got_flex, want_flex, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="fixed-length"):
        ella_cfg_denoise(x, 700, feats, one_token, scale)


# ------------------------------------------------------------------------------------------------ training method

@pytest.fixture(scope="module")
def ella_method():
    import ml_collections

    from t2ijax.data.tokenizer import load_tokenizer
    from t2ijax.methods import get_method

    vocab = len(load_tokenizer("shapes_word", 8))
    c = ml_collections.ConfigDict()
    c.method, c.compute_dtype, c.seed = "ella", "float32", 0
    c.data = dict(tokenizer="shapes_word", max_length=8, resolution=8)
    c.sample = dict(num_steps=2, guidance_scale=5.0)
    c.model = dict(
        ella=dict(time_channel=16, time_embed_dim=16, width=16, layers=1, heads=2, num_latents=4, input_dim=24),
        unet=dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=[16], layers_per_block=1,
                  attention_head_dim=[2], down_block_types=["CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D"], cross_attention_dim=16, norm_num_groups=8),
        text=dict(vocab_size=vocab, d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=3),
        text_dtype="float32", text_mode="fixed", caption_dropout=0.1, prediction_type="epsilon",
        schedule=dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"))
    method = get_method("ella", c)
    frozen = method.frozen(c)
    params = nn.meta.unbox(jax.jit(lambda key: method.init(key, c))(jax.random.key(0)))
    return c, method, frozen, params


def test_ella_method_trains_only_the_tsc(ella_method, tmp_path):
    from t2ijax.train.method import check_method

    config, method, frozen, params = ella_method
    check_method(method, "ella")
    assert method.trainable_item == "connector"
    assert set(frozen) == {"unet", "text_encoder", "empty_features", "empty_mask"}
    assert set(params) == {"time_embedding", "connector"}
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32),
             "input_ids": jnp.asarray(rng.integers(3, 20, (2, 8)), jnp.int32),
             "attention_mask": jnp.ones((2, 8), jnp.int32)}
    grad_fn = jax.jit(jax.value_and_grad(lambda p, f, key: method.loss(p, f, batch, key), has_aux=True))
    (loss, metrics), grads = grad_fn(params, frozen, jax.random.key(1))
    print(f"ELLA method loss at init: {float(loss):.4f}")
    assert np.isfinite(float(loss)) and 0.0 <= float(metrics["caption_dropout_frac"]) <= 1.0
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    # the zero-initialised AdaLN projections still receive gradient, so they learn from step one
    ada = grads["connector"]["perceiver_blocks.0"]["ln_1"]["linear"]["kernel"]
    assert float(jnp.max(jnp.abs(ada))) > 0

    images = method.sample(params, frozen, ["a red circle", "a blue square"], jax.random.key(2))
    assert images.shape == (2, 8, 8, 3) and images.dtype == np.uint8
    exported = method.export(params, str(tmp_path))
    module, reloaded = load_ella(exported[0], heads=2)
    assert module == method.tsc.clone(dtype=jnp.float32)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, reloaded))


def test_ella_method_caption_dropout_uses_empty_prompt_features(ella_method):
    import copy

    config, method, frozen, params = ella_method
    always_drop = copy.copy(method)
    always_drop.caption_dropout = 1.0
    rng = np.random.default_rng(1)
    image = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
    batch_a = {"image": image, "input_ids": jnp.asarray(rng.integers(3, 20, (2, 8)), jnp.int32),
               "attention_mask": jnp.ones((2, 8), jnp.int32)}
    batch_b = dict(batch_a, input_ids=jnp.asarray(rng.integers(3, 20, (2, 8)), jnp.int32))
    out = jax.jit(lambda p, f, key: [m.loss(p, f, b, key) for m in (always_drop, method)
                                     for b in (batch_a, batch_b)])(params, frozen, jax.random.key(0))
    (dropped_a, m_da), (dropped_b, _), (kept_a, m_ka), (kept_b, _) = out
    assert float(m_da["caption_dropout_frac"]) == 1.0 and float(m_ka["caption_dropout_frac"]) == 0.0
    assert float(dropped_a) == float(dropped_b)  # the caption no longer matters: both became T5("")
    assert float(kept_a) != float(kept_b)
