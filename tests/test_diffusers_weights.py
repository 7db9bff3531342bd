"""diffusers folder I/O: strict loading, clear errors, bit-exact round trips, export readable by diffusers."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import diffusers
import torch

from t2ijax.models.layers import abstract_init
from t2ijax.models.unet import UNet2DConditionModel
from t2ijax.weights import load_unet, load_vae, save_unet, save_vae
from t2ijax.weights.torch_layout import WeightLoadError, read_weights

UNET = dict(sample_size=8, block_out_channels=[32, 64], layers_per_block=1, attention_head_dim=[2, 4],
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], cross_attention_dim=16, norm_num_groups=8,
            use_linear_projection=True)
VAE = dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, latent_channels=4,
           down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=16)
STEM = "diffusion_pytorch_model"


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("unet")
    diffusers.UNet2DConditionModel(**UNET).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae")
    diffusers.AutoencoderKL(**VAE).save_pretrained(path)
    return path


def _tensors_equal_bytes(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


def test_unet_round_trip_is_bit_exact(unet_dir, tmp_path):
    module, params = load_unet(unet_dir)
    save_unet(module, params, tmp_path / "out")
    _tensors_equal_bytes(load_file(unet_dir / f"{STEM}.safetensors"),
                         load_file(tmp_path / "out" / f"{STEM}.safetensors"))
    with open(unet_dir / "config.json") as f, open(tmp_path / "out" / "config.json") as g:
        assert json.load(f) == json.load(g)
    module2, params2 = load_unet(tmp_path / "out")
    assert module2 == module
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)


def test_unet_export_loads_in_diffusers(unet_dir, tmp_path):
    module, params = load_unet(unet_dir)
    save_unet(module, params, tmp_path)
    ref = diffusers.UNet2DConditionModel.from_pretrained(unet_dir)
    ours = diffusers.UNet2DConditionModel.from_pretrained(tmp_path)
    for (k, a), (k2, b) in zip(ref.state_dict().items(), ours.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_unet_built_in_python_exports_a_config_diffusers_reads(tmp_path):
    module = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=(1, 1), attention_heads=(2, 4),
                                  transformer_layers_per_block=(1, 1), only_cross_attention=(False, False),
                                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                  norm_num_groups=8)
    abstract, _ = abstract_init(module, *module.example_inputs(context_length=3)[:3])
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda a: rng.standard_normal(a.shape).astype(np.float32), abstract)
    save_unet(module, params, tmp_path)
    diffusers.UNet2DConditionModel.from_pretrained(tmp_path)  # strict in diffusers: raises on any mismatch
    again, _ = load_unet(tmp_path)
    assert again.clone(config=()) == module


def test_sharded_save_and_sharded_placement(unet_dir, tmp_path):
    module, params = load_unet(unet_dir)
    files = save_unet(module, params, tmp_path, max_shard_bytes=200_000)
    assert len(files) > 1 and os.path.exists(tmp_path / f"{STEM}.safetensors.index.json")
    device = jax.devices()[0]
    shardings = jax.tree_util.tree_map(lambda _: jax.sharding.SingleDeviceSharding(device), params)
    _, params2 = load_unet(tmp_path, shardings=shardings)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)


def test_misshaped_key_names_key_and_both_shapes(unet_dir, tmp_path):
    sd = load_file(unet_dir / f"{STEM}.safetensors")
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert sd[key].shape == (32, 16)
    sd[key] = np.zeros((sd[key].shape[0], 12), np.float32)
    save_file(sd, tmp_path / f"{STEM}.safetensors")
    (tmp_path / "config.json").write_text((unet_dir / "config.json").read_text())
    with pytest.raises(WeightLoadError) as err:
        load_unet(tmp_path)
    msg = str(err.value)
    print("\n" + msg)
    assert key in msg and "(32, 12)" in msg and "(32, 16)" in msg


def test_missing_and_unexpected_keys_are_named(unet_dir, tmp_path):
    sd = load_file(unet_dir / f"{STEM}.safetensors")
    sd.pop("conv_out.bias")
    sd["conv_out.extra"] = np.zeros(3, np.float32)
    save_file(sd, tmp_path / f"{STEM}.safetensors")
    (tmp_path / "config.json").write_text((unet_dir / "config.json").read_text())
    with pytest.raises(WeightLoadError,
                       match=r"missing key\(s\): conv_out.bias[\s\S]*unexpected key\(s\): conv_out.extra"):
        load_unet(tmp_path)


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(UNET))
    (tmp_path / f"{STEM}.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="never loads pickles"):
        load_unet(tmp_path)


def test_unsupported_config_values_are_named():
    with pytest.raises(ValueError, match=r"addition_embed_type='text'.*time_cond_proj_dim=8"):
        UNet2DConditionModel.from_config({**UNET, "addition_embed_type": "text", "time_cond_proj_dim": 8})
    with pytest.raises(ValueError, match="down_block_types"):
        UNet2DConditionModel.from_config({**UNET, "down_block_types": ["AttnDownBlock2D", "DownBlock2D"]})
    with pytest.raises(ValueError, match="does not know.*not_a_diffusers_key"):
        UNet2DConditionModel.from_config({**UNET, "not_a_diffusers_key": 1})
    with pytest.raises(ValueError, match="one entry per block"):
        UNet2DConditionModel.from_config({**UNET, "attention_head_dim": [2, 4, 8]})
    # bookkeeping keys are ignored
    UNet2DConditionModel.from_config({**UNET, "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.42.1"})


def test_vae_round_trip_is_bit_exact_and_loads_in_diffusers(vae_dir, tmp_path):
    module, params = load_vae(vae_dir)
    assert module.scaling_factor == 0.18215 and module.shift_factor is None
    save_vae(module, params, tmp_path)
    _tensors_equal_bytes(load_file(vae_dir / f"{STEM}.safetensors"), load_file(tmp_path / f"{STEM}.safetensors"))
    ref = diffusers.AutoencoderKL.from_pretrained(vae_dir)
    ours = diffusers.AutoencoderKL.from_pretrained(tmp_path)
    for (k, a), (k2, b) in zip(ref.state_dict().items(), ours.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_loading_works_without_torch(unet_dir, vae_dir):
    """Library code must not import torch or diffusers: block them and load both folders."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["diffusers"] = None
        from t2ijax.weights import load_unet, load_vae
        load_unet({str(unet_dir)!r})
        load_vae({str(vae_dir)!r})
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_read_weights_of_saved_folder_matches_params(unet_dir):
    module, params = load_unet(unet_dir)
    sd = read_weights(unet_dir, STEM)
    w = sd["time_embedding.linear_1.weight"]
    np.testing.assert_array_equal(np.asarray(params["time_embedding"]["linear_1"]["kernel"]), w.T)


SHARDED_CHECK = """
import sys
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn, torch, diffusers
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from t2ijax.models.layers import abstract_init
from t2ijax.models.unet import UNet2DConditionModel
from t2ijax.weights import load_unet
from t2ijax.weights.torch_layout import read_config

path = sys.argv[1]
assert len(jax.devices()) == 8
mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
rules = (("conv_out", "model"), ("heads", "model"), ("mlp", "model"), ("embed", None), ("conv_in", None),
         ("norm", None))
ref = diffusers.UNet2DConditionModel.from_pretrained(path).eval()
module = UNet2DConditionModel.from_config(read_config(path))
_, specs = abstract_init(module, *module.example_inputs()[:3])
shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
module, params = load_unet(path, shardings=shardings)
sharded = [x for x in jax.tree_util.tree_leaves(params) if not x.sharding.is_fully_replicated]
assert len(sharded) > 20, len(sharded)
g = torch.Generator().manual_seed(0)
x, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 16, generator=g)
t = torch.tensor([10, 900])
with torch.no_grad():
    want = ref(x, t, c).sample.numpy()
batch = NamedSharding(mesh, P("data"))
xs = jax.device_put(jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), batch)
cs = jax.device_put(jnp.asarray(c.numpy()), batch)
got = jax.jit(module.apply)({"params": params}, xs, jnp.asarray(t.numpy()), cs)
got = np.asarray(got).transpose(0, 3, 1, 2)
err, scale = float(np.abs(got - want).max()), float(np.abs(want).max())
print(f"sharded U-Net on 2x4 mesh: {len(sharded)} sharded params, max|ours-ref| = {err:.3e}, max|ref| = {scale:.3e}")
assert err <= 1e-4 * scale
print("OK")
"""


def test_sharded_load_and_forward_on_8_devices(unet_dir):
    """Logical axes -> 2x4 mesh shardings; load_unet places every tensor sharded; forward still matches diffusers."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SHARDED_CHECK, str(unet_dir)], capture_output=True, text=True,
                         timeout=600, env=env)
    print(out.stdout)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
