"""Parity of t2ijax's AutoencoderKL with diffusers' PyTorch model, loaded through `load_vae`.

Criterion: max|ours - ref| <= 1e-4 * max|ref| for the posterior mean, logvar and the decoded image.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusers
import torch

from t2ijax.models.vae import AutoencoderKL, gaussian_kl, sample_latent
from t2ijax.weights import load_vae

VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[32, 64], layers_per_block=1,
           norm_num_groups=8, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
           sample_size=16, scaling_factor=0.18215)


def nhwc(t):
    return jnp.asarray(t.numpy().transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**VAE)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    ref.eval()
    path = tmp_path_factory.mktemp("vae")
    ref.save_pretrained(path)
    module, params = load_vae(path)
    return ref, module, params


def _report(what, ours, ref):
    err, scale = float(np.abs(ours - ref).max()), float(np.abs(ref).max())
    print(f"\nVAE parity [{what}]: max|ours-ref| = {err:.3e}, max|ref| = {scale:.3e}, ratio = {err / scale:.3e}")
    assert err <= 1e-4 * scale


def test_encode_matches_diffusers(vae):
    ref, module, params = vae
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        dist = ref.encode(images).latent_dist
    mean, logvar = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode"))(params, nhwc(images))
    assert mean.shape == (2, 8, 8, 4)
    _report("encode mean", np.asarray(mean).transpose(0, 3, 1, 2), dist.mean.numpy())
    _report("encode logvar", np.asarray(logvar).transpose(0, 3, 1, 2), dist.logvar.numpy())
    kl = gaussian_kl(mean, logvar)
    np.testing.assert_allclose(np.asarray(kl), dist.kl().numpy(), rtol=1e-4)


def test_decode_matches_diffusers(vae):
    ref, module, params = vae
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        images = ref.decode(latents).sample.numpy()
    ours = jax.jit(lambda p, z: module.apply({"params": p}, z, method="decode"))(params, nhwc(latents))
    _report("decode", np.asarray(ours).transpose(0, 3, 1, 2), images)


def test_posterior_sample_and_latent_scaling(vae):
    _, module, _ = vae
    mean = jnp.zeros((4096, 1, 1, 4))
    z = sample_latent(mean, jnp.full_like(mean, np.log(4.0)), jax.random.key(0))
    assert abs(float(z.std()) - 2.0) < 0.05
    x = jnp.arange(8.0).reshape(1, 1, 2, 4)
    np.testing.assert_allclose(module.unscale_latents(module.scale_latents(x)), x, rtol=1e-6)
    shifted = module.clone(shift_factor=0.5)
    np.testing.assert_allclose(shifted.scale_latents(x), (x - 0.5) * 0.18215, rtol=1e-6)
    assert module.shift_factor is None


def test_from_config_rejects_unsupported_values():
    with pytest.raises(ValueError, match="down_block_types"):
        AutoencoderKL.from_config({**VAE, "down_block_types": ["AttnDownEncoderBlock2D"] * 2})
    with pytest.raises(ValueError, match="does not know.*latent_scale"):
        AutoencoderKL.from_config({**VAE, "latent_scale": 3})
    with pytest.raises(ValueError, match="NHWC images with 3 channels"):
        module = AutoencoderKL.from_config(VAE)
        jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 3, 16, 16))))
