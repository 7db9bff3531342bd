"""diffusers' class embeddings in t2ijax's UNet2DConditionModel: parity, export, config and input errors.

Each case is a tiny random float32 diffusers U-Net (saved with `save_pretrained`, every parameter perturbed
with a seeded normal), loaded through `t2ijax.weights.load_unet` and run on the same inputs, class labels
included. Criterion: max|ours - ref| < 1e-4 (float32).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusers
import torch

from t2ijax.models.unet import UNet2DConditionModel
from t2ijax.weights import load_unet, save_unet
from t2ijax.weights.torch_layout import read_weights

TINY = dict(sample_size=8, block_out_channels=[8, 16], layers_per_block=1, attention_head_dim=2,
            down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"],
            cross_attention_dim=8, norm_num_groups=4, mid_block_type=None)
TIME_DIM = 4 * 8  # time_embed_dim of TINY

# name -> (extra config, class labels (torch)). The "timestep" case also changes act_fn (its class
# TimestepEmbedding follows it) and the sinusoid (flip_sin_to_cos, freq_shift: shared with the timesteps);
# "projection" uses act_fn="gelu" while diffusers' projection TimestepEmbedding keeps silu.
CASES = {
    "num_class_embeds": (dict(num_class_embeds=10), lambda g: torch.tensor([3, 7])),
    "timestep": (dict(class_embed_type="timestep", act_fn="mish", flip_sin_to_cos=False, freq_shift=1),
                 lambda g: torch.tensor([3.0, 250.0])),
    "projection": (dict(class_embed_type="projection", projection_class_embeddings_input_dim=12, act_fn="gelu"),
                   lambda g: torch.randn(2, 12, generator=g)),
    "simple_projection": (dict(class_embed_type="simple_projection", projection_class_embeddings_input_dim=12),
                          lambda g: torch.randn(2, 12, generator=g)),
    "identity": (dict(class_embed_type="identity"), lambda g: torch.randn(2, TIME_DIM, generator=g)),
    "timestep_concat": (dict(class_embed_type="timestep", class_embeddings_concat=True,
                             time_embedding_act_fn="silu"), lambda g: torch.tensor([3.0, 250.0])),
}


def perturb(model, seed=0, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def nhwc(t):
    return jnp.asarray(t.numpy().transpose(0, 2, 3, 1))


_BUILT = {}


def _make_case(name, tmp_path_factory):
    extra, labels_fn = CASES[name]
    cfg = {**TINY, **extra}
    torch.manual_seed(0)
    ref_model = perturb(diffusers.UNet2DConditionModel(**cfg))
    path = tmp_path_factory.mktemp(name)
    ref_model.save_pretrained(path)  # safetensors
    module, params = load_unet(path)
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    timesteps = torch.tensor([11, 751])
    context = torch.randn(2, 5, 8, generator=g)
    labels = labels_fn(g)
    with torch.no_grad():
        ref = ref_model(sample, timesteps, context, class_labels=labels).sample.numpy()
    inputs = (nhwc(sample), jnp.asarray(timesteps.numpy()), jnp.asarray(context.numpy()),
              jnp.asarray(labels.numpy()))
    return dict(name=name, cfg=cfg, ref_model=ref_model, path=path, module=module, params=params, inputs=inputs,
                ref=ref, torch_inputs=(sample, timesteps, context, labels))


def _get(name, tmp_path_factory):
    if name not in _BUILT:
        _BUILT[name] = _make_case(name, tmp_path_factory)
    return _BUILT[name]


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    return _get(request.param, tmp_path_factory)


def test_forward_matches_diffusers(case):
    module, params, (sample, t, context, labels) = case["module"], case["params"], case["inputs"]
    # eager (op by op): the cases share almost every op shape, so this is faster here than 6 jit compilations
    out = np.asarray(module.apply({"params": params}, sample, t, context, class_labels=labels))
    out = out.transpose(0, 3, 1, 2)
    ref = case["ref"]
    assert out.shape == ref.shape
    err = float(np.abs(out - ref).max())
    print(f"\nclass embedding parity [{case['name']}]: max|ours-ref| = {err:.3e}, max|ref| = "
          f"{float(np.abs(ref).max()):.3e}")
    assert err < 1e-4
    # the class labels matter (the embedding is not silently dropped): swap them between the two samples
    other = np.asarray(module.apply({"params": params}, sample, t, context, class_labels=labels[::-1]))
    assert float(np.abs(other.transpose(0, 3, 1, 2) - ref).max()) > 1e-3


def test_class_embedding_params_and_logical_axes(case):
    module, (sample, t, context, labels) = case["module"], case["inputs"]
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), sample, t, context, class_labels=labels))["params"]
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: hasattr(x, "names"))
    assert all(hasattr(leaf, "names") for leaf in leaves)
    if case["name"] == "identity":
        assert "class_embedding" not in boxed
    else:
        names = jax.tree_util.tree_leaves(boxed["class_embedding"], is_leaf=lambda x: hasattr(x, "names"))
        assert names and all(len(leaf.names) == len(leaf.value.shape) for leaf in names)
    expected = {k for k in case["ref_model"].state_dict() if k.startswith("class_embedding.")}
    assert expected == {k for k in read_weights(case["path"], "diffusion_pytorch_model")
                        if k.startswith("class_embedding.")}


def test_export_loads_strictly_in_diffusers(case, tmp_path):
    module, params = case["module"], case["params"]
    save_unet(module, params, tmp_path)
    ours = diffusers.UNet2DConditionModel.from_pretrained(tmp_path)  # strict: raises on missing/unexpected keys
    ref_sd = case["ref_model"].state_dict()
    assert sorted(ours.state_dict()) == sorted(ref_sd)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, ref_sd[k]), k
    sample, t, context, labels = case["torch_inputs"]
    with torch.no_grad():
        out = ours.eval()(sample, t, context, class_labels=labels).sample.numpy()
    np.testing.assert_array_equal(out, case["ref"])
    again, _ = load_unet(tmp_path)
    assert again == module


def test_to_config_round_trips_the_class_fields(case):
    module = case["module"]
    built = module.clone(config=())  # to_config derived from the fields
    cfg = built.to_config()
    for k in ("class_embed_type", "num_class_embeds", "projection_class_embeddings_input_dim",
              "class_embeddings_concat"):
        assert cfg[k] == case["cfg"].get(k, {"class_embeddings_concat": False}.get(k))
    assert UNet2DConditionModel.from_config(cfg).clone(config=()) == built
    diffusers.UNet2DConditionModel.from_config(cfg)  # diffusers accepts the derived config
    labels = module.example_class_labels(batch=3)
    assert labels.shape == ((3,) if case["name"] in ("num_class_embeds", "timestep", "timestep_concat") else
                            (3, {"identity": TIME_DIM}.get(case["name"], 12)))


def test_missing_and_misshaped_class_labels_are_clear():
    module = UNet2DConditionModel.from_config({**TINY, "num_class_embeds": 10})
    sample, t, context, _ = module.example_inputs(batch=2, size=8, context_length=5)
    init = lambda **kw: jax.eval_shape(lambda: module.init(jax.random.key(0), sample, t, context, **kw))  # noqa
    with pytest.raises(ValueError, match="class_labels should be provided when"):
        init()
    with pytest.raises(ValueError, match=r"class_labels must have shape \(2,\)"):
        init(class_labels=jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="integer class ids"):
        init(class_labels=jnp.zeros((2,), jnp.float32))
    proj = UNet2DConditionModel.from_config({**TINY, "class_embed_type": "projection",
                                             "projection_class_embeddings_input_dim": 12})
    with pytest.raises(ValueError, match=r"class_labels must have shape \(2, 12\)"):
        jax.eval_shape(lambda: proj.init(jax.random.key(0), sample, t, context, class_labels=jnp.zeros((2,))))
    plain = UNet2DConditionModel.from_config(TINY)
    assert plain.example_class_labels() is None
    with pytest.raises(ValueError, match="no class embedding"):
        jax.eval_shape(lambda: plain.init(jax.random.key(0), sample, t, context, class_labels=jnp.zeros((2,))))
    with pytest.raises(ValueError, match="requires `projection_class_embeddings_input_dim`"):
        UNet2DConditionModel.from_config({**TINY, "class_embed_type": "simple_projection"})
    with pytest.raises(ValueError, match="class_embeddings_concat=True needs a class embedding"):
        UNet2DConditionModel.from_config({**TINY, "class_embeddings_concat": True})
    with pytest.raises(ValueError, match="class_embed_type='learned'"):
        UNet2DConditionModel.from_config({**TINY, "class_embed_type": "learned"})


@pytest.mark.parametrize("name", ["num_class_embeds", "projection"])  # a (B,) and a (B, D) kind
def test_frozen_unet_initialises_a_class_conditioned_unet(name, tmp_path_factory):
    from t2ijax.methods.common import frozen_unet

    case = _get(name, tmp_path_factory)

    frozen = frozen_unet(None, case["cfg"], jnp.float32)
    with pytest.warns(UserWarning, match="RANDOM"):
        params = frozen.params(np.random.default_rng(0))
    shapes = jax.tree_util.tree_map(lambda a: a.shape, params)
    assert shapes == jax.tree_util.tree_map(lambda a: a.shape, case["params"])
    loaded = frozen_unet(str(case["path"]), None, jnp.float32)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                           loaded.params(np.random.default_rng(0)), case["params"])
