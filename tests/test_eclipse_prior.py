"""ECLIPSE prior: exact sizes, parity with the released PyTorch module and diffusers' diffusion prior,
strict loading, bit-exact round trip of the released folder layout."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.transformers.prior_transformer import PriorTransformer as TorchPrior
from safetensors.numpy import load_file

from t2ijax.models.layers import abstract_init
from t2ijax.models.prior import PriorTransformer
from t2ijax.weights import load_eclipse_prior, save_eclipse_prior
from t2ijax.weights.torch_layout import WeightLoadError
from torch_eclipse_prior import EclipsePriorTorch, randomise

TINY = dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=12, num_embeddings=6)


def n_params(module):
    abstract, _ = abstract_init(module, *module.example_inputs())
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))


@pytest.mark.parametrize("dim,count", [(768, 33_143_040), (1280, 34_193_152)])
def test_released_sizes(dim, count):
    assert n_params(PriorTransformer.eclipse(dim)) == count


def inputs(seed=0, b=3, e=12, length=6):
    rng = np.random.default_rng(seed)
    mask = np.ones((b, length), np.int64)
    mask[0, 3:] = 0  # padded text
    mask[1, 5:] = 0
    return (rng.standard_normal((b, e)).astype(np.float32), rng.standard_normal((b, e)).astype(np.float32),
            rng.standard_normal((b, length, e)).astype(np.float32), mask)


def test_eclipse_parity_with_released_module(tmp_path):
    ref = randomise(EclipsePriorTorch(**TINY))
    ref.save_pretrained(tmp_path)
    cfg = json.load(open(tmp_path / "config.json"))
    assert cfg["additional_embeddings"] == 3
    module, params = load_eclipse_prior(tmp_path)
    assert not module.time_embedding
    noise, text_embeds, states, mask = inputs()
    with torch.no_grad():
        want = ref(*(torch.from_numpy(a) for a in (noise, text_embeds, states, mask))).numpy()
        want_nomask = ref(*(torch.from_numpy(a) for a in (noise, text_embeds, states))).numpy()
    got = module.apply({"params": params}, noise, text_embeds, states, jnp.asarray(mask))
    got_nomask = module.apply({"params": params}, noise, text_embeds, states, None)
    err = float(np.max(np.abs(np.asarray(got) - want)))
    print(f"ECLIPSE prior max |jax - torch| = {err:.2e} (output scale {np.abs(want).max():.2f})")
    assert got.shape == (3, 12)
    assert err < 1e-4
    assert np.max(np.abs(np.asarray(got_nomask) - want_nomask)) < 1e-4
    assert np.max(np.abs(np.asarray(got_nomask) - want)) > 1e-3  # the padding mask matters


def test_diffusion_prior_parity_with_diffusers(tmp_path):
    ref = randomise(TorchPrior(**TINY, additional_embeddings=4, time_embed_dim=20))
    ref.save_pretrained(tmp_path)
    module, params = load_eclipse_prior(tmp_path)
    assert module.time_embedding
    noise, text_embeds, states, mask = inputs(1)
    t = np.array([0, 17, 999])
    with torch.no_grad():
        want = ref(torch.from_numpy(noise), torch.from_numpy(t), torch.from_numpy(text_embeds),
                   torch.from_numpy(states), torch.from_numpy(mask)).predicted_image_embedding.numpy()
        post = ref.post_process_latents(torch.from_numpy(want)).numpy()
    got = module.apply({"params": params}, noise, text_embeds, states, jnp.asarray(mask), timestep=jnp.asarray(t))
    assert np.max(np.abs(np.asarray(got) - want)) < 1e-4
    got_post = module.apply({"params": params}, got, method="post_process_latents")
    assert np.max(np.abs(np.asarray(got_post) - post)) < 1e-4


def test_round_trip_bit_exact(tmp_path):
    ref = randomise(EclipsePriorTorch(**TINY), seed=3)
    ref.save_pretrained(tmp_path / "released", safe_serialization=True)
    module, params = load_eclipse_prior(tmp_path / "released")
    save_eclipse_prior(module, params, tmp_path / "export")
    a = load_file(tmp_path / "released" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "export" / "diffusion_pytorch_model.safetensors")
    assert sorted(a) == sorted(b)
    assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    _, again = load_eclipse_prior(tmp_path / "export")
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(again)))
    # PyTorch users read the export with the released class
    cfg = json.load(open(tmp_path / "export" / "config.json"))
    back = EclipsePriorTorch(**{k: cfg[k] for k in TINY}).eval()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in b.items()}, strict=True)
    noise, text_embeds, states, mask = inputs(2)
    with torch.no_grad():
        want = back(*(torch.from_numpy(x) for x in (noise, text_embeds, states, mask))).numpy()
    got = module.apply({"params": params}, noise, text_embeds, states, jnp.asarray(mask))
    assert np.max(np.abs(np.asarray(got) - want)) < 1e-4


def test_clear_errors(tmp_path):
    module = PriorTransformer.eclipse(**TINY)
    noise, text_embeds, states, mask = inputs()
    params = module.init(jax.random.PRNGKey(0), noise, text_embeds, states, mask)["params"]
    with pytest.raises(ValueError, match="num_embeddings"):
        module.apply({"params": params}, noise, text_embeds, states[:, :4], mask[:, :4])
    with pytest.raises(ValueError, match="takes none"):
        module.apply({"params": params}, noise, text_embeds, states, mask, timestep=jnp.zeros((3,)))
    with pytest.raises(ValueError, match="dropout"):
        PriorTransformer.from_config({**TINY, "dropout": 0.1})
    ref = EclipsePriorTorch(**TINY)
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("norm_out")}
    ref.save_pretrained(tmp_path)
    from safetensors.torch import save_file
    save_file(sd, os.path.join(tmp_path, "diffusion_pytorch_model.safetensors"))
    with pytest.raises(WeightLoadError, match="norm_out.weight"):
        load_eclipse_prior(tmp_path)
    with pytest.raises(FileNotFoundError, match="local folders"):
        load_eclipse_prior(tmp_path / "ECLIPSE-Community/ECLIPSE_Karlo_Prior")
