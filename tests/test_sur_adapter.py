"""SUR-adapter: released sizes, parity with a PyTorch rendering of the released `Adapter`, the quirk switches
(Q1 attend_across_batch, Q2 dropout_at_inference, Q5 dead params), weight I/O, init, KD losses, LLM projection."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import linen as nn
from safetensors.numpy import load_file
from safetensors.torch import save_file as torch_save_file

from t2ijax.methods.sur_losses import (apply_llm_projection, kd_loss, llm_projection, sur_distillation_losses)
from t2ijax.models.layers import abstract_init
from t2ijax.models.sur_adapter import SURAdapter, SUROutput, copy_template_layer, trainable_mask
from t2ijax.weights import load_sur_adapter, save_sur_adapter
from t2ijax.weights.sur_adapter import load_llm_projection
from t2ijax.weights.torch_layout import WeightLoadError
from torch_sur_adapter import LLMResize, RefAdapter, ref_distillation_loss

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")

# The PyTorch reference (the released `Adapter`, `LLMResize` and `distillation_loss`) is tests/torch_sur_adapter.py,
# shared with benchmarks/sur_adapter.py.

# ------------------------------------------------------------------------------------------------

TINY = dict(width=32, depth=2, heads=8, ff_dim=48)
B, L = 3, 7
TOL = dict(rtol=1e-5, atol=1e-5)


def make_reference(seed=0, eta=0.1):
    torch.manual_seed(seed)
    ref = RefAdapter(depth=TINY["depth"], adapter_weight=eta, sd_text_size=TINY["width"], nhead=TINY["heads"],
                     dim_feedforward=TINY["ff_dim"]).eval()
    with torch.no_grad():  # randomise everything (fc weight included), layers differ from the template
        for name, p in ref.named_parameters():
            p.add_(0.3 * torch.randn_like(p))
    return ref


def state_dict_np(ref):
    return {k: v.detach().contiguous() for k, v in ref.state_dict().items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ref = make_reference()
    path = tmp_path_factory.mktemp("sur") / "adapter.safetensors"
    torch_save_file(state_dict_np(ref), str(path))
    return ref, path


@pytest.fixture(scope="module")
def clip_states():
    return np.random.default_rng(0).standard_normal((B, L, TINY["width"])).astype(np.float32)


@functools.lru_cache(maxsize=None)
def jitted(module, return_all=True, deterministic=True):
    return jax.jit(lambda p, x, rng=None: module.apply({"params": p}, x, deterministic=deterministic,
                                                       return_all=return_all,
                                                       rngs=None if rng is None else {"dropout": rng}))


def torch_run(ref, x, batch_first_fix):
    with torch.no_grad():
        return tuple(t.numpy() for t in ref(torch.from_numpy(x), batch_first_fix=batch_first_fix))


def assert_triple_close(got, want, what):
    """float32 parity: rtol 1e-5 and atol 1e-5 relative to the tensor's scale (fc_out reaches ~10 here)."""
    for name, g, w in zip(SUROutput._fields, got, want):
        scale = max(1.0, float(np.max(np.abs(w))))
        err = float(np.max(np.abs(np.asarray(g) - w)))
        print(f"{what} {name}: max abs err {err:.2e} (scale {scale:.1f})")
        np.testing.assert_allclose(np.asarray(g), w, rtol=TOL["rtol"], atol=TOL["atol"] * scale,
                                   err_msg=f"{what}: {name}")


# ------------------------------------------------------------------------------------------------ size / keys

def test_released_config_parameter_counts_via_eval_shape():
    x = jax.ShapeDtypeStruct((2, 77, 768), jnp.float32)
    abstract, specs = abstract_init(SURAdapter(), x)
    count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
    assert count(abstract) == 20_085_504  # the released state dict = adapter.parameters()
    assert count(abstract["encoder_layer"]) == 5_513_984
    assert count(abstract["transformer_encoder"]) == 11_027_968
    assert count(abstract["attention"]) == 2_952_960 and count(abstract["fc"]) == 590_592
    effective, _ = abstract_init(SURAdapter(dead_params=False), x)
    assert count(effective) == 13_980_928
    print(f"SUR-adapter params: {count(abstract):,} (state dict), {count(effective):,} (effective)")
    # every parameter carries logical axis names
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
    assert len(spec_leaves) == len(jax.tree.leaves(abstract))
    assert all(any(a is not None for a in s) for s in spec_leaves)


def test_key_set_equals_released_module(checkpoint):
    from t2ijax.weights.sur_adapter import expected_keys
    ref, _ = checkpoint
    assert expected_keys(SURAdapter(**TINY)) == set(ref.state_dict())


# ------------------------------------------------------------------------------------------------ parity

def test_reproduction_mode_matches_released_module_in_eval(checkpoint, clip_states):
    ref, path = checkpoint
    module, params = load_sur_adapter(path, reproduce_release=True)
    assert module.attend_across_batch and module.dropout_at_inference and module.dead_params
    assert (module.width, module.depth, module.ff_dim, module.heads, module.eta) == (32, 2, 48, 8, 0.1)
    eval_mode = module.clone(dropout_at_inference=False)  # torch's eval(): dropout off
    got = jitted(eval_mode)(params, clip_states)
    assert_triple_close(got, torch_run(ref, clip_states, batch_first_fix=False), "release (eval)")


def test_default_paper_intent_matches_batch_first_encoder(checkpoint, clip_states):
    ref, path = checkpoint
    module, params = load_sur_adapter(path)
    assert not module.attend_across_batch and not module.dropout_at_inference
    got = jitted(module)(params, clip_states)
    assert_triple_close(got, torch_run(ref, clip_states, batch_first_fix=True), "paper intent")
    # the default call returns the adapted states only
    out = module.apply({"params": params}, clip_states)
    np.testing.assert_allclose(np.asarray(out), np.asarray(got.out), rtol=1e-6, atol=1e-6)
    assert out.shape == (B, L, TINY["width"])


def test_attend_across_batch_couples_the_batch_as_released(checkpoint, clip_states):
    ref, path = checkpoint
    paper, params = load_sur_adapter(path)
    release = paper.clone(attend_across_batch=True)
    run_paper, run_release = jitted(paper, False), jitted(release, False)
    batched_p, batched_r = np.asarray(run_paper(params, clip_states)), np.asarray(run_release(params, clip_states))
    alone_p = np.concatenate([np.asarray(run_paper(params, clip_states[i:i + 1])) for i in range(B)])
    alone_r = np.concatenate([np.asarray(run_release(params, clip_states[i:i + 1])) for i in range(B)])
    # paper intent: each sample is independent of the rest of the batch
    np.testing.assert_allclose(batched_p, alone_p, rtol=1e-5, atol=1e-5)
    # release: a sample's output depends on the other batch members (CFG halves attend to each other) ...
    coupling = float(np.max(np.abs(batched_r - alone_r)))
    print(f"release mode: max change of a sample's output from batching it with others: {coupling:.3f}")
    assert coupling > 1e-3
    # ... exactly as the released module does, for batch 1 too (there each token attends only to itself)
    for i in range(B):
        want = torch_run(ref, clip_states[i:i + 1], batch_first_fix=False)[0]
        np.testing.assert_allclose(alone_r[i:i + 1], want, **TOL)
    assert float(np.max(np.abs(alone_r - alone_p))) > 1e-3  # so the switch matters at batch 1 as well


# ------------------------------------------------------------------------------------------------ dropout

def test_dropout_at_inference_is_stochastic_and_needs_an_rng(checkpoint, clip_states):
    _, path = checkpoint
    module, params = load_sur_adapter(path, reproduce_release=True)
    run = jitted(module, False)
    a, b = np.asarray(run(params, clip_states, jax.random.key(1))), np.asarray(run(params, clip_states,
                                                                                    jax.random.key(2)))
    again = np.asarray(run(params, clip_states, jax.random.key(1)))
    np.testing.assert_array_equal(a, again)
    assert float(np.max(np.abs(a - b))) > 1e-4
    with pytest.raises(ValueError, match="dropout"):
        module.apply({"params": params}, clip_states)
    # without the switch inference is deterministic and needs no rng; deterministic=False (training) drops out
    plain = module.clone(dropout_at_inference=False)
    det = np.asarray(jitted(plain, False)(params, clip_states))
    train = np.asarray(jitted(plain, False, False)(params, clip_states, jax.random.key(1)))
    np.testing.assert_array_equal(train, a)  # same rng, same dropout masks
    assert float(np.max(np.abs(train - det))) > 1e-4


# ------------------------------------------------------------------------------------------------ weights I/O

def test_export_round_trip_and_strict_torch_load(checkpoint, clip_states, tmp_path):
    ref, path = checkpoint
    module, params = load_sur_adapter(path, reproduce_release=True, eta=0.25)
    out = save_sur_adapter(module, params, tmp_path / "export")
    a, b = load_file(str(path)), load_file(out)
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), k
    fresh = RefAdapter(depth=2, adapter_weight=0.25, sd_text_size=32, nhead=8, dim_feedforward=48).eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in b.items()}, strict=True)
    # the sidecar stores eta and the switches; reloading restores them
    with open(out.replace(".safetensors", ".sur_config.json")) as f:
        cfg = json.load(f)
    assert cfg["eta"] == 0.25 and cfg["attend_across_batch"] and cfg["dropout_at_inference"]
    module2, params2 = load_sur_adapter(tmp_path / "export")
    assert module2 == module
    got = jitted(module2.clone(dropout_at_inference=False))(params2, clip_states)
    assert_triple_close(got, torch_run(fresh, clip_states, batch_first_fix=False), "export (eta 0.25)")


def test_fp16_export(checkpoint, tmp_path):
    _, path = checkpoint
    module, params = load_sur_adapter(path)
    out = save_sur_adapter(module, params, tmp_path / "half.safetensors", dtype="float16")
    b = load_file(out)
    assert all(v.dtype == np.float16 for v in b.values())
    module2, params2 = load_sur_adapter(out)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params2))


def test_without_dead_params_loads_and_exports_strictly(checkpoint, clip_states, tmp_path):
    ref, path = checkpoint
    module, params = load_sur_adapter(path, dead_params=False)
    assert "encoder_layer" not in params and "value_layer" not in params["attention"]
    full_module, full_params = load_sur_adapter(path)
    np.testing.assert_array_equal(np.asarray(module.apply({"params": params}, clip_states)),
                                  np.asarray(full_module.apply({"params": full_params}, clip_states)))
    out = save_sur_adapter(module, params, tmp_path / "lean.safetensors")
    b = load_file(out)
    assert set(b) == set(ref.state_dict())
    assert not np.any(b["encoder_layer.linear1.weight"]) and not np.any(b["attention.value_layer.bias"])
    fresh = RefAdapter(depth=2, adapter_weight=0.1, sd_text_size=32, nhead=8, dim_feedforward=48).eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in b.items()}, strict=True)
    assert_triple_close(jitted(module)(params, clip_states), torch_run(fresh, clip_states, True), "lean export")
    module2, params2 = load_sur_adapter(out)  # the sidecar keeps dead_params=False
    assert not module2.dead_params and "encoder_layer" not in params2


def test_strict_key_check_names_missing_and_unexpected(checkpoint, tmp_path):
    ref, _ = checkpoint
    sd = state_dict_np(ref)
    del sd["attention.key_layer.bias"]
    sd["attention.extra.weight"] = torch.zeros(3)
    bad = tmp_path / "bad.safetensors"
    torch_save_file(sd, str(bad))
    with pytest.raises(WeightLoadError) as e:
        load_sur_adapter(bad)
    msg = str(e.value)
    print(msg)
    assert "missing" in msg and "attention.key_layer.bias" in msg
    assert "unexpected" in msg and "attention.extra.weight" in msg
    sd = state_dict_np(ref)
    sd["transformer_encoder.layers.1.linear1.weight"] = torch.zeros(40, 32)
    torch_save_file(sd, str(bad))
    with pytest.raises(WeightLoadError, match=r"layers\.1\.linear1\.weight.*\(40, 32\).*\(48, 32\)"):
        load_sur_adapter(bad)
    sd = state_dict_np(ref)
    del sd["attention.value_layer.weight"]  # half of the dead parameters: strict as well
    torch_save_file(sd, str(bad))
    with pytest.raises(WeightLoadError, match="value_layer.weight"):
        load_sur_adapter(bad)
    with pytest.raises(ValueError, match="divisible"):
        load_sur_adapter(checkpoint[1], heads=5)


@pytest.mark.parametrize("name", ["adapter.pt", "adapter_checkpoint1000.pt", "adapter.bin", "adapter.ckpt"])
def test_pickled_checkpoints_are_refused_with_conversion_command(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"\x80\x02not unpickled")
    with pytest.raises(ValueError) as e:
        load_sur_adapter(p)
    assert "safetensors.torch.save_file(torch.load(p, weights_only=True), out)" in str(e.value)
    with pytest.raises(FileNotFoundError, match="weights_only=True"):
        load_sur_adapter(tmp_path)  # a folder holding only the pickle


# ------------------------------------------------------------------------------------------------ init

def test_init_zero_fc_gives_scaled_input_plus_bias(clip_states):
    module = SURAdapter(**TINY)
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), clip_states)["params"])
    fc = params["fc"]
    assert not np.any(fc["kernel"])
    bound = TINY["width"] ** -0.5
    assert np.all(np.abs(fc["bias"]) <= bound) and float(np.max(np.abs(fc["bias"]))) > 0.5 * bound
    out = np.asarray(module.apply({"params": params}, clip_states))
    np.testing.assert_allclose(out, 0.9 * clip_states + 0.1 * np.asarray(fc["bias"]), rtol=1e-6, atol=1e-6)
    # the dead parameters exist; the mask keeps them out of the optimizer
    mask = trainable_mask(params)
    assert not any(jax.tree.leaves(mask["encoder_layer"]))
    assert not any(jax.tree.leaves(mask["attention"]["value_layer"]))
    assert all(jax.tree.leaves(mask["transformer_encoder"])) and all(jax.tree.leaves(mask["fc"]))
    # nn.TransformerEncoder's deep copy of the template, reproduced on request
    tied = copy_template_layer(params)
    for i in range(TINY["depth"]):
        for a, b in zip(jax.tree.leaves(tied["transformer_encoder"][f"layers.{i}"]),
                        jax.tree.leaves(params["encoder_layer"])):
            np.testing.assert_array_equal(a, b)
    # the MultiheadAttention init: zero biases of the packed projections and of out_proj
    attn = params["transformer_encoder"]["layers.0"]["self_attn"]
    assert all(not np.any(attn[p]["bias"]) for p in ("q_proj", "k_proj", "v_proj", "out_proj"))


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match=r"\(B, L, 32\)"):
        SURAdapter(**TINY).init(jax.random.key(0), jnp.zeros((2, 5, 16)))


# ------------------------------------------------------------------------------------------------ losses

@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_loss_matches_torch_kl_div(temperature):
    rng = np.random.default_rng(3)
    llm = rng.standard_normal((B, 1, 32)).astype(np.float32) * 2
    enc = rng.standard_normal((B, L, 32)).astype(np.float32) * 2
    other = rng.standard_normal((B, L, 32)).astype(np.float32) * 2
    for x, y in ((llm, enc), (other, enc), (enc, llm)):
        want = ref_distillation_loss(torch.from_numpy(x), torch.from_numpy(y), temperature).item()
        got = float(kd_loss(x, y, temperature))
        np.testing.assert_allclose(got, want, rtol=1e-5)
        also = (F.kl_div(F.log_softmax(torch.from_numpy(x) / temperature, -1),
                         F.softmax(torch.from_numpy(y) / temperature, -1), reduction="batchmean")
                * temperature ** 2).item()
        np.testing.assert_allclose(got, also, rtol=1e-5)


def test_detach_target_controls_gradient_into_target():
    rng = np.random.default_rng(4)
    s, t = (jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32) for _ in range(2))
    g_release = jax.grad(lambda t: kd_loss(s, t, detach_target=False))(t)
    g_detached = jax.grad(lambda t: kd_loss(s, t, detach_target=True))(t)
    assert float(jnp.max(jnp.abs(g_release))) > 1e-4
    assert not np.any(np.asarray(g_detached))
    # the gradient matches torch's through the (non-detached) target
    tt = torch.tensor(np.asarray(t), requires_grad=True)
    ref_distillation_loss(torch.tensor(np.asarray(s)), tt).backward()
    np.testing.assert_allclose(np.asarray(g_release), tt.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_release_distillation_terms(checkpoint, clip_states):
    _, path = checkpoint
    module, params = load_sur_adapter(path)
    rng = np.random.default_rng(5)
    v_llm = rng.standard_normal((B, 40)).astype(np.float32)
    complex_prompt = rng.standard_normal((B, L, 32)).astype(np.float32)
    proj = llm_projection(0, 40, 32)
    llm_vec = apply_llm_projection(proj, v_llm)
    res = jitted(module)(params, clip_states)
    losses = sur_distillation_losses(res.encoder_out, res.out, llm_vec, complex_prompt)
    t = lambda a: torch.tensor(np.asarray(a))
    np.testing.assert_allclose(float(losses["llm"]),
                               ref_distillation_loss(t(llm_vec)[:, None], t(res.encoder_out)).item(), rtol=1e-5)
    np.testing.assert_allclose(float(losses["prompt"]),
                               ref_distillation_loss(t(complex_prompt), t(res.out)).item(), rtol=1e-5)

    def total(p, release):
        r = module.apply({"params": p}, clip_states, return_all=True)
        terms = sur_distillation_losses(r.encoder_out, r.out, llm_vec, complex_prompt, reproduce_release=release)
        return terms["llm"] + terms["prompt"]

    # both orders train the adapter (release: through the KL target, Q6; standard KD: through the student)
    grad = jax.jit(jax.grad(total), static_argnums=1)
    for release in (True, False):
        g = grad(params, release)
        assert float(jnp.max(jnp.abs(g["transformer_encoder"]["layers.0"]["linear1"]["kernel"]))) > 0
        assert not np.any(np.asarray(g["attention"]["value_layer"]["kernel"]))  # dead parameter


def test_llm_projection_is_seeded_saved_and_torch_loadable(checkpoint, tmp_path):
    _, path = checkpoint
    p0, p0b, p1 = llm_projection(0, 40, 32), llm_projection(jax.random.key(0), 40, 32), llm_projection(1, 40, 32)
    assert p0["kernel"].shape == (40, 32) and p0["bias"].shape == (32,)
    np.testing.assert_array_equal(p0["kernel"], p0b["kernel"])
    assert np.any(np.asarray(p0["kernel"]) != np.asarray(p1["kernel"]))
    bound = 40 ** -0.5
    assert float(jnp.max(jnp.abs(p0["kernel"]))) <= bound and float(jnp.max(jnp.abs(p0["kernel"]))) > 0.9 * bound
    module, params = load_sur_adapter(path)
    out = save_sur_adapter(module, params, tmp_path / "with_llm.safetensors", llm_projection=p0)
    loaded = load_llm_projection(out)
    np.testing.assert_array_equal(loaded["kernel"], p0["kernel"])
    np.testing.assert_array_equal(loaded["bias"], p0["bias"])
    # the file is the release's LLMResize state dict (self.fc = Linear(llm_size, sd_text_size))
    resize = LLMResize(llm_size=40, sd_text_size=32)
    resize.load_state_dict({k: torch.from_numpy(v) for k, v in
                            load_file(out.replace(".safetensors", ".llm_resize.safetensors")).items()}, strict=True)
    v = np.random.default_rng(6).standard_normal((2, 1, 40)).astype(np.float32)
    with torch.no_grad():
        want = resize.fc(torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(np.asarray(apply_llm_projection(loaded, v)), want, rtol=1e-5, atol=1e-6)
    # the adapter loader ignores the projection file sitting next to it
    assert load_sur_adapter(tmp_path)[0] == module
