"""Expert ensembles (issue 14): partitions, the stacked vmap step vs training each expert alone, sequential
modes, per-expert clipping, init from a parent, routing at sampling, export."""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t2ijax import diffusion
from t2ijax.config_utils import load_config
from t2ijax.diffusion import experts as px
from t2ijax.models.experts import expert_params, stack_params

warnings.filterwarnings("ignore", message=".*RANDOM weights.*")


# ------------------------------------------------------------------------------------------- partitions

def test_ediffi_tree_boundaries_are_the_lognormal_quantiles():
    d = px.ediffi_tree(((9, 511), (3, 0)))
    assert d.num_experts == 3 and d.names == ("E(3,0)", "rest[0.125,0.998047)", "E(9,511)")
    lo, hi = d.boundaries
    # methods.md 5.2: sigma < ~0.0757 and sigma > ~9.61, ln sigma -2.580 and 2.263
    assert math.log(lo) == pytest.approx(-1.2 + 1.2 * -1.1503493803760079, abs=1e-9)
    assert lo == pytest.approx(0.0757, abs=1e-4) and hi == pytest.approx(9.61, abs=1e-2)
    assert d.masses == pytest.approx([1 / 8, 1 - 1 / 8 - 1 / 512, 1 / 512])
    two = px.ediffi_tree(((1, 0), (1, 1)))
    assert two.boundaries == pytest.approx((math.exp(-1.2),))  # the median, ~0.301
    assert px.equal_mass(4).boundaries == pytest.approx((0.134, 0.301, 0.677), abs=1e-3)
    with pytest.raises(ValueError, match="overlap"):
        px.ediffi_tree(((1, 1), (2, 3)))
    with pytest.raises(ValueError, match="not a node"):
        px.ediffi_tree(((2, 4),))


def test_ernie_blocks_route_floor_t_over_100():
    p = px.ernie_blocks(10)
    t = np.arange(1000)
    np.testing.assert_array_equal(p.expert_of(t), t // 100)
    assert p.masses == pytest.approx([0.1] * 10)
    with pytest.raises(ValueError, match="equal blocks"):
        px.ernie_blocks(3)


def test_training_levels_stay_in_their_interval_with_the_truncated_distribution():
    key = jax.random.PRNGKey(0)
    d = px.ediffi_tree(((9, 511), (3, 0)))
    ids = jnp.repeat(jnp.arange(3), 20000)
    sig = np.asarray(d.sample_levels(key, ids))
    np.testing.assert_array_equal(d.expert_of(sig), np.asarray(ids))
    # inside each interval the CDF of the draws is the truncated log-normal's (quantiles uniform)
    for j, (lo, hi) in enumerate(d.intervals()):
        q = (d.cdf(sig[np.asarray(ids) == j]) - d.cdf(lo)) / (d.cdf(hi) - d.cdf(lo))
        assert np.abs(np.sort(q) - np.linspace(0, 1, len(q))).max() < 0.02
    e = px.ernie_blocks(4)
    t = np.asarray(e.sample_levels(key, ids[:40000] % 4))
    np.testing.assert_array_equal(t // 250, np.asarray(ids[:40000] % 4))
    assert np.bincount(t[np.asarray(ids[:40000] % 4) == 1] - 250).min() > 0  # every t of the block drawn


def test_partition_from_config_checks_the_formulation():
    with pytest.raises(ValueError, match="ernie needs ddpm"):
        px.from_config({"partition": "ernie", "num_experts": 4}, formulation="edm")
    with pytest.raises(ValueError, match="choose single"):
        px.from_config({"partition": "nope"}, formulation="edm")


# ------------------------------------------------------------------------------------------- routing

def _recording_denoiser(log):
    def fn(params, x, t, cond):
        jax.debug.callback(lambda e, s: log.append((int(e), float(s))), params["id"], t[0], ordered=True)
        return x * 0.5 + params["w"] * 0.0
    return fn


@pytest.mark.parametrize("case", ["heun_edm_tree", "ddim_ernie"])
def test_each_sampling_step_runs_the_expert_of_its_noise_level(case):
    if case == "heun_edm_tree":
        part = px.ediffi_tree(((9, 511), (3, 0)))
        sampler = diffusion.Heun(schedule=diffusion.EDMSchedule(), prediction_type="sample")
        level_of = lambda plan: plan.eval_sigmas  # noqa: E731
    else:
        part = px.ernie_blocks(10)
        sampler = diffusion.DDIM(prediction_type="sample", timestep_spacing="trailing")
        level_of = lambda plan: plan.model_times  # noqa: E731
    n = part.num_experts
    stacked = {"id": jnp.arange(n), "w": jnp.ones((n, 2))}
    plan = diffusion.samplers.cached_plan(sampler, 25)
    table = part.table(plan)
    log = []
    diffusion.sample(_recording_denoiser(log), stacked, sampler, jnp.ones((1, 2)), {}, num_steps=25,
                     expert_table=table)
    jax.effects_barrier()
    assert len(log) == plan.num_evals
    used, times = np.array([e for e, _ in log]), np.array([t for _, t in log])
    np.testing.assert_allclose(times, plan.model_times, rtol=1e-6)
    np.testing.assert_array_equal(used, part.expert_of(level_of(plan)))
    assert len(set(used)) == n if case == "heun_edm_tree" else len(set(used)) == 10


def test_stacked_sampling_has_no_switch_and_matches_per_expert_lists():
    part = px.equal_mass(3)
    sampler = diffusion.Euler(schedule=diffusion.EDMSchedule(), prediction_type="sample")
    table = part.table(diffusion.samplers.cached_plan(sampler, 8))
    stacked = {"w": jnp.asarray([0.9, 0.5, 0.1])}
    fn = lambda p, x, s, c: x * p["w"]  # noqa: E731
    x_T = jax.random.normal(jax.random.PRNGKey(0), (2, 3))
    a = diffusion.sample(fn, stacked, sampler, x_T, {}, num_steps=8, expert_table=table)
    b = diffusion.sample(fn, [{"w": w} for w in stacked["w"]], sampler, x_T, {}, num_steps=8, expert_table=table)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    jaxpr = str(jax.make_jaxpr(lambda p, x: diffusion.sample(fn, p, sampler, x, {}, num_steps=8,
                                                             expert_table=table))(stacked, x_T))
    assert " cond[" not in jaxpr and "switch" not in jaxpr
    with pytest.raises(ValueError, match="leading"):
        diffusion.sample(fn, {"w": jnp.ones(3), "v": jnp.ones(2)}, sampler, x_T, {}, num_steps=8, expert_table=table)


# ------------------------------------------------------------------------------------------- optimizer pieces

def test_clip_by_expert_norm_equals_clipping_each_expert_alone():
    from t2ijax.train.optim import clip_by_expert_norm

    rng = np.random.default_rng(0)
    grads = {"unet": {"a": jnp.asarray(rng.normal(size=(3, 4, 5)) * [[[1.0]], [[0.01]], [[10.0]]]),
                      "b": jnp.asarray(rng.normal(size=(3, 2)))},
             "text": {"c": jnp.asarray(rng.normal(size=(6,)) * 5)}}
    tx = clip_by_expert_norm(1.0, lambda path: path[0].key == "unet")
    out, _ = tx.update(grads, tx.init(grads))
    ref = optax.clip_by_global_norm(1.0)
    for e in range(3):
        alone, _ = ref.update(expert_params(grads["unet"], e), ref.init(None))
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), expert_params(out["unet"], e), alone)
    shared, _ = ref.update(grads["text"], ref.init(None))
    np.testing.assert_allclose(out["text"]["c"], shared["c"], rtol=1e-6)


# ------------------------------------------------------------------------------------------- the method

def _config(**experts):
    c = load_config("configs/experts_shapes.py:tiny")
    c.model.train_text_encoder = False
    c.optim.grad_clip_norm = 0.05  # small: clipping is active, per expert
    c.optim.warmup_steps = 0
    c.optim.eps = 1e-3  # Adam normalises each element: a near-zero gradient's rounding would dominate its update
    c.ema_decay = 0.0
    # 8x8 pixels and one cross-attention level: the compiled steps stay small
    c.data.resolution = 8
    c.model.unet.sample_size = 8
    with c.unlocked():
        c.model.unet.mid_block_type = None  # fewer ops to compile
    with c.unlocked():
        c.model.experts.step = "vmap"
        for k, v in experts.items():
            c.model.experts[k] = v
    if experts.get("mode", "vmap") != "vmap":
        c.batch_size = 2
    return c


def _batch(c, seed=0):
    rng = np.random.default_rng(seed)
    b, r = int(c.batch_size), int(c.data.resolution)
    ids = rng.integers(4, 20, size=(b, int(c.data.max_length))).astype(np.int32)
    return {"image": jnp.asarray(rng.uniform(-1, 1, (b, r, r, 3)), jnp.float32), "input_ids": jnp.asarray(ids),
            "attention_mask": jnp.ones_like(jnp.asarray(ids))}


@pytest.fixture(scope="module")
def vmap_run():
    from t2ijax.train import loop

    c = _config()
    s = loop.setup(c)
    step = jax.jit(loop.make_train_step(s.method, s.tx, s.schedule, c))
    state0 = s.state
    batches = [_batch(c, 0), _batch(c, 1)]
    state = state0
    for batch in batches:
        state, metrics = step(state, s.frozen, batch)
    return c, s, state0, state, batches, metrics


def test_vmap_step_equals_training_each_expert_separately(vmap_run):
    from t2ijax.train.optim import make_optimizer

    c, s, state0, state, batches, metrics = vmap_run
    m = s.method
    n, b = m.num_experts, int(c.batch_size) // m.num_experts
    assert set(metrics) >= {"loss", "loss_mean", "loss_expert_0", "loss_expert_2"}
    tx, _ = make_optimizer(c.optim, int(c.total_steps))  # the plain optimizer, one global clip norm
    grad_fn = jax.jit(jax.grad(m._expert_loss))  # compiled once for all experts

    @jax.jit
    def apply(grads, opt, p):
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt

    for e in range(n):
        p = expert_params(state0.params["unet"], e)
        opt = tx.init(p)
        for i, batch in enumerate(batches):
            rng = jax.random.fold_in(state0.rng, i)
            cond_key, level_key, noise_key = jax.random.split(rng, 3)
            cond = m.conditioner.train_cond(state0.params, s.frozen, batch, cond_key)
            ids = jnp.broadcast_to(jnp.arange(n)[:, None], (n, b))
            levels = m.partition.sample_levels(level_key, ids)[e]
            sl = slice(e * b, (e + 1) * b)
            grads = grad_fn(p, batch["image"][sl], jax.tree.map(lambda x: x[sl], cond), levels,
                            jax.random.split(noise_key, n)[e])
            p, opt = apply(grads, opt, p)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5),
                     expert_params(state.params["unet"], e), p)
    # the frozen text encoder did not move; the experts moved apart from their common start
    jax.tree.map(np.testing.assert_array_equal, state.params["text_encoder"], state0.params["text_encoder"])
    k0, k1 = (np.asarray(expert_params(state.params["unet"], e)["conv_in"]["kernel"]) for e in (0, 1))
    assert not np.allclose(k0, k1)


def test_unrolled_step_computes_the_vmapped_losses(vmap_run):
    from t2ijax.methods.experts import ExpertsMethod

    c, s, state0, _, batches, _ = vmap_run
    with c.unlocked():
        c.model.experts.step = "unrolled"
    unrolled = ExpertsMethod(c)
    rng = jax.random.PRNGKey(3)
    a = jax.jit(s.method.loss)(state0.params, s.frozen, batches[0], rng)[1]
    b = jax.jit(unrolled.loss)(state0.params, s.frozen, batches[0], rng)[1]
    for e in range(3):
        np.testing.assert_allclose(a[f"loss_expert_{e}"], b[f"loss_expert_{e}"], rtol=1e-5)


def test_sequential_round_robin_trains_one_expert_per_step_and_leaves_the_others_bit_identical():
    from t2ijax.train import loop

    c = _config(mode="round_robin")
    s = loop.setup(c)
    step = jax.jit(loop.make_train_step(s.method, s.tx, s.schedule, c))
    state = s.state
    for i in range(2):
        expected = int(s.method.selected_expert(i))
        assert expected == i  # round robin over experts 0, 1, 2
        prev = jax.device_get(state.params["unet"])
        state, metrics = step(state, s.frozen, _batch(c, i))
        assert int(metrics["expert"]) == expected
        now = jax.device_get(state.params["unet"])
        for e in range(3):
            same = jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a[e], b[e])), prev, now))
            assert same == (e != expected), (i, e, expected)


def test_expert_masked_optimizer_keeps_untrained_experts_and_their_moments():
    from t2ijax.train.optim import expert_masked

    def is_stacked(path):
        return path[0].key == "unet"

    params = {"unet": jnp.arange(12.0).reshape(3, 4), "text": jnp.ones(2)}
    tx = expert_masked(optax.adamw(0.1, weight_decay=0.1), lambda count: jnp.arange(3) == (count % 2), is_stacked)
    state = tx.init(params)
    grads = {"unet": jnp.ones((3, 4)), "text": jnp.ones(2)}
    p = params
    for i in range(3):
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
    np.testing.assert_array_equal(p["unet"][2], params["unet"][2])  # never active: not even weight decay
    mu = state[1][0].mu["unet"]
    assert np.all(np.asarray(mu[2]) == 0) and np.all(np.asarray(mu[:2]) != 0)
    assert not np.allclose(p["text"], params["text"])  # shared leaves train every step
    assert int(state[0]) == 3


def test_by_mass_picks_experts_with_their_interval_probability():
    c = _config(mode="by_mass", partition="equal_mass", num_experts=4)
    from t2ijax.methods.experts import ExpertsMethod

    m = ExpertsMethod(c)
    picks = np.asarray(jax.vmap(m.selected_expert)(jnp.arange(8000)))
    np.testing.assert_allclose(np.bincount(picks, minlength=4) / 8000, m.partition.masses, atol=0.02)
    with c.unlocked():
        c.model.experts.partition, c.model.experts.nodes = "ediffi_tree", ((1, 0), (1, 1))
    assert ExpertsMethod(c).partition.num_experts == 2


def _save_unet(path, unet, like_state):
    from t2ijax.train.checkpoint import Checkpointer

    ckpt = Checkpointer(str(path / "checkpoints"), async_save=False)
    ckpt.save(like_state.replace(params={**like_state.params, "unet": unet}), config_json={})
    ckpt.close()


def test_experts_start_from_a_parent_an_ensemble_or_other_runs(vmap_run, tmp_path):
    from t2ijax.train import loop

    c, s, state0, _, _, _ = vmap_run
    host0 = jax.device_get(state0)
    single = expert_params(host0.params["unet"], 0)
    _save_unet(tmp_path / "parent", single, host0)
    c2 = _config()
    c2.init_from = str(tmp_path / "parent")
    s2 = loop.setup(c2)
    unet = jax.device_get(loop.init_from(s2)["unet"])  # the loop's path: restore, adapt, check, place
    for e in range(3):
        jax.tree.map(np.testing.assert_array_equal, expert_params(unet, e), single)
    # a one-expert run (partition "single", as the experiment's parent) is a single model too
    one = {"unet": stack_params([single]), "text_encoder": host0.params["text_encoder"]}
    got = s.method.adapt_init_params(one, s.abstract_state.params)["unet"]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[2], b), got, single)
    # an ensemble parent: expert j <- parent expert parents[j] (growing the tree at its extremes)
    marked = stack_params([jax.tree.map(lambda x, v=v: np.full_like(x, v), single) for v in (1.0, 2.0)])
    saved = {"unet": marked, "text_encoder": host0.params["text_encoder"]}
    with pytest.raises(ValueError, match="experts.parents"):
        s.method.adapt_init_params(saved, s.abstract_state.params)
    from t2ijax.methods.experts import ExpertsMethod

    with c2.unlocked():
        c2.model.experts.parents = [0, 1, 1]
    got = ExpertsMethod(c2).adapt_init_params(saved, s.abstract_state.params)["unet"]["conv_in"]["bias"]
    np.testing.assert_array_equal(got[:, 0], [1.0, 2.0, 2.0])
    # swap one expert in from another run, addressed as workdir:index
    _save_unet(tmp_path / "other", stack_params([jax.tree.map(lambda x: np.full_like(x, 7.0), single)] * 2), host0)
    with c2.unlocked():
        c2.model.experts.sources = ["", f"{tmp_path / 'other'}:1", ""]
    got = ExpertsMethod(c2).adapt_init_params(saved, s.abstract_state.params)["unet"]["conv_in"]["bias"]
    np.testing.assert_array_equal(got[:, 0], [1.0, 7.0, 2.0])


def test_sample_and_export_per_expert(vmap_run, tmp_path):
    from t2ijax.weights import load_unet

    c, s, _, state, _, _ = vmap_run
    imgs = s.method.sample(state.params, s.frozen, ["a red circle", "a blue square"], seeds=[0, 1])
    assert imgs.shape == (2, 8, 8, 3) and imgs.dtype == np.uint8
    again = s.method.sample(state.params, s.frozen, ["a red circle"], seeds=[0])
    np.testing.assert_array_equal(again[0], imgs[0])
    written = s.method.export(state.params, str(tmp_path))
    assert any(w.endswith("experts.json") for w in written)
    _, loaded = load_unet(str(tmp_path / "unet_expert_2"))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 loaded, jax.device_get(expert_params(state.params["unet"], 2)))
