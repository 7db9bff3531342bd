"""Paint-with-words (eDiff-I) and knowledge-enhanced training (ERNIE-ViLG 2.0), issue 15: where the attention
edits land, their formulas and switches, and the training inputs."""

from __future__ import annotations

import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax.config_utils import load_config
from t2ijax.data.tokenizer import CaptionTokenizer, load_tokenizer
from t2ijax.methods import knowledge as kn
from t2ijax.methods import paint_with_words as pw
from t2ijax.methods.common import random_frozen_params
from t2ijax.models import transformer_2d
from t2ijax.models.attention import AttentionEdit, combine_edits
from t2ijax.models.unet import UNet2DConditionModel

warnings.filterwarnings("ignore", message=".*RANDOM weights.*")

PROMPT = "a red circle and a blue square"
L = 12


@pytest.fixture(scope="module")
def encode():
    return CaptionTokenizer(load_tokenizer("shapes_word", L), L)


def _two_phrase_paint(hw=16):
    m = np.zeros((2, hw, hw), np.float32)
    m[0, : hw // 2, : hw // 2] = 1
    m[1, hw // 2:, hw // 2:] = 1
    return pw.Paint(["red circle", "blue square"], m, [1.0, 0.5])


def _recording_attention(monkeypatch):
    """Record (q, k, bias) of every U-Net attention (an eager apply)."""
    calls = []
    inner = transformer_2d.attention

    def record(q, k, v, *, bias=None, **kwargs):
        calls.append((q, k, bias))
        return inner(q, k, v, bias=bias, **kwargs)

    monkeypatch.setattr(transformer_2d, "attention", record)
    return calls


def test_phrase_columns_are_the_phrase_tokens_of_every_occurrence(encode):
    cols = pw.phrase_columns("a red circle above a red circle", "red circle", encode)
    ids = encode("a red circle above a red circle")["input_ids"]
    words = load_tokenizer("shapes_word", L).convert_ids_to_tokens(ids[cols > 0].tolist())
    assert words == ["red", "circle", "red", "circle"]
    with pytest.raises(ValueError, match="does not occur in the prompt"):
        pw.phrase_columns(PROMPT, "green triangle", encode)
    with pytest.raises(ValueError, match="does not occur"):  # whole words only
        pw.phrase_columns(PROMPT, "red circ", encode)


def test_paint_bias_lands_on_the_phrase_columns_at_every_resolution_and_not_on_the_unconditional(
        encode, monkeypatch):
    unet = UNet2DConditionModel.from_config(dict(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=[4, 8], layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=2,
        cross_attention_dim=8, norm_num_groups=2))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
    ctx = jax.random.normal(jax.random.PRNGKey(1), (2, L, 8))
    params = {"params": random_frozen_params(unet, np.random.default_rng(2), x, jnp.zeros((2,)), ctx)}
    paint = _two_phrase_paint()
    a = pw.paint_matrix(paint, PROMPT, encode, scale=2.0)
    matrix = jnp.stack([jnp.zeros_like(a), a])  # the CFG batch: unconditional first
    sigma = jnp.array([3.0, 3.0])
    calls = _recording_attention(monkeypatch)
    unet.apply(params, x, jnp.array([500.0, 500.0]), ctx,
               attention_bias_fn=pw.bias_fn(matrix, sigma, pw.PaintSettings(), (8, 8)))
    columns = {i for p in paint.phrases for i in np.flatnonzero(pw.phrase_columns(PROMPT, p, encode))}
    cross = [(q, k, b) for q, k, b in calls if k.shape[1] == L]
    assert {q.shape[1] for q, _, _ in cross} == {64, 16}  # 8x8 and 4x4 (down, mid, up); masks are 16x16
    assert all(b is None for q, k, b in calls if k.shape[1] != L)  # self-attention is never painted
    for q, k, bias in cross:
        bias = np.asarray(bias)
        assert bias.shape == (2, 1, q.shape[1], L)
        assert not bias[0].any()  # the unconditional branch is unbiased
        painted = set(np.flatnonzero(np.abs(bias[1]).sum(axis=(0, 1))))
        assert painted == columns  # exactly the phrases' token columns
        # value: scale * 0.1 w' log(1 + sigma) max(QK^T) A, A bilinearly resized to this layer's grid
        side = int(round(q.shape[1] ** 0.5))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        w = 0.1 * np.log1p(3.0) * float(jnp.max(scores[1]))
        resized = np.asarray(jax.image.resize(a, (side, side, L), "linear")).reshape(-1, L)
        np.testing.assert_allclose(bias[1, 0], q.shape[-1] ** -0.5 * w * resized, rtol=2e-5, atol=1e-6)


def test_weight_functions_and_the_after_scale_switch():
    scores = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 5)) * 2
    sigma = jnp.array([0.5, 7.0])
    community = pw.weight(pw.PaintSettings("community"), scores, sigma)
    paper = pw.weight(pw.PaintSettings("paper"), scores, sigma)
    std = pw.weight(pw.PaintSettings("std"), scores, sigma)
    np.testing.assert_allclose(paper, 10 * community, rtol=1e-6)
    np.testing.assert_allclose(paper, np.log1p(np.asarray(sigma)) * np.asarray(scores).reshape(2, -1).max(1), rtol=1e-6)
    np.testing.assert_allclose(std, 0.4 * np.log1p(np.asarray(sigma) ** 2) * np.asarray(scores).reshape(2, -1).std(1),
                               rtol=1e-5)
    matrix = jnp.ones((2, 4, 4, 5))
    q = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 3, 8))
    k = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 3, 8))

    def paint_bias(settings):
        return pw.bias_fn(matrix, sigma, settings, (4, 4))(16, 5).resolve(q, k, k, 8 ** -0.5)[0]

    before, after = paint_bias(pw.PaintSettings()), paint_bias(pw.PaintSettings(before_scale=False))
    np.testing.assert_allclose(after, before * 8 ** 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="paint weight"):
        pw.PaintSettings("max")


def test_ddpm_sigma_is_the_k_diffusion_sigma():
    from t2ijax.diffusion import DiscreteSchedule

    s = DiscreteSchedule()
    ac = s.alphas_cumprod
    np.testing.assert_allclose(pw.ddpm_sigma(s, jnp.array([0.0, 999.0])), np.sqrt((1 - ac) / ac)[[0, 999]], rtol=1e-6)
    mid = float(pw.ddpm_sigma(s, jnp.array([10.5]))[0])
    assert s.sigmas[10] < mid < s.sigmas[11]


def test_segmentation_image_and_colour_map_give_the_masks(tmp_path):
    image = np.full((8, 8, 3), 255, np.uint8)
    image[:4, :4] = (7, 9, 182)
    image[4:, 4:] = (255, 0, 0)
    paint = pw.Paint.from_segmentation(image, {"#0709b6": "blue square,0.5", "255,0,0": "red circle"})
    assert paint.phrases == ["blue square", "red circle"] and paint.strengths == [0.5, 1.0]
    assert paint.masks[0, :4, :4].all() and paint.masks[0].sum() == 16 and paint.masks[1, 4:, 4:].all()
    with pytest.raises(ValueError, match="does not occur in the segmentation"):
        pw.Paint.from_segmentation(image, {"#00ff00": "green triangle"})
    with pytest.raises(ValueError, match="#rrggbb"):
        pw.parse_colour("blue")
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "mask.png")
    loaded = pw.load_paint(str(tmp_path / "mask.png"), '{"#ff0000": "red circle,2"}')
    assert loaded.phrases == ["red circle"] and loaded.strengths == [2.0]
    with pytest.raises(ValueError, match="JSON object"):
        pw.load_paint(str(tmp_path / "mask.png"), "[1, 2]")


def test_ella_refuses_painting():
    from t2ijax.methods.ella import ELLAMethod

    fake = types.SimpleNamespace(tsc=types.SimpleNamespace(num_latents=64))
    with pytest.raises(ValueError, match="64 latent queries"):
        ELLAMethod.sample(fake, None, None, ["a red circle"], paint=[_two_phrase_paint()])


# ------------------------------------------------------------------------------------------- key tokens

def _attention_out(bias_fn, q, k, v):
    """transformer_2d.Attention's resolve + attention, outside a module."""
    from t2ijax.models.attention import attention, resolve_bias

    bias, v = resolve_bias(bias_fn, q, k, v, q.shape[-1] ** -0.5)
    return attention(q, k, v, bias=bias, scale=q.shape[-1] ** -0.5)


@pytest.mark.parametrize("placement", kn.PLACEMENTS)
def test_key_token_emphasis_placements(placement):
    q = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 2, 4))
    k = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 2, 4))
    v = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 2, 4))
    m = jnp.array([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], jnp.float32)
    know = kn.Knowledge(key_weight=0.5, key_placement=placement)
    out = np.asarray(_attention_out(know.key_token_fn(m), q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    factor = 1 + 0.5 * np.asarray(m)[:, None, None, :]
    if placement == "logits":
        logits = logits * factor
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if placement != "logits":
        p = p * factor  # post-softmax, not renormalised ...
        if placement == "renormalised":
            p /= p.sum(-1, keepdims=True)
    expected = np.einsum("bhqk,bkhd->bqhd", p, v)
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-6)
    plain = np.asarray(_attention_out(None, q, k, v))
    np.testing.assert_allclose(out[1], plain[1], rtol=1e-6, atol=1e-7)  # no key tokens: unchanged
    assert np.abs(out[0] - plain[0]).max() > 1e-3


def test_combined_edits_add_biases_and_multiply_value_scales():
    a = AttentionEdit(bias=jnp.ones((1, 1, 2, 3)), value_scale=jnp.full((1, 3), 2.0))
    b = AttentionEdit(bias=jnp.ones((1, 1, 2, 3)), value_scale=jnp.full((1, 3), 3.0),
                      score_bias=lambda s: 0 * s + 1.0)
    c = combine_edits(a, None, b)
    q = jnp.zeros((1, 2, 1, 4))
    k = jnp.zeros((1, 3, 1, 4))
    bias, v = c.resolve(q, k, jnp.ones_like(k), 0.5)
    np.testing.assert_allclose(bias, 2.0 + 0.5)
    np.testing.assert_allclose(v, 6.0)


# ------------------------------------------------------------------------------------------- training inputs

def _batch(b=4, hw=8, length=L):
    masks = np.zeros((b, 4, hw, hw), np.float32)
    masks[:, 0, :4, :4] = 1
    masks[:, 1, 4:, 4:] = 1  # object 1 is invalid in every example: ignored
    return {
        "masks": jnp.asarray(masks), "object_valid": jnp.asarray(np.tile([1, 0, 0, 0], (b, 1)), jnp.float32),
        "boxes": jnp.asarray(np.tile([[0, 0, 0.5, 0.5]] * 4, (b, 1, 1)), jnp.float32),
        "key_token_mask": jnp.asarray(np.tile((np.arange(length) % 3 == 1), (b, 1)), jnp.float32),
    }


def test_region_weights_are_one_plus_w_l_on_the_objects_of_the_drawn_examples():
    batch = _batch(b=64)
    know = kn.Knowledge(region_weight=0.1)
    w = np.asarray(know.region_weights(batch, jax.random.PRNGKey(0), (8, 8)))[..., 0]
    chosen = w.max(axis=(1, 2)) > 1
    assert 0.3 < chosen.mean() < 0.7  # region_fraction 0.5
    np.testing.assert_allclose(w[chosen][:, :4, :4], 1.1, rtol=1e-6)
    np.testing.assert_allclose(w[chosen][:, 4:, :], 1.0)
    np.testing.assert_allclose(w[~chosen], 1.0)
    boxes = np.asarray(kn.Knowledge(regions="boxes", region_fraction=1.0).region_weights(batch, jax.random.PRNGKey(0),
                                                                                       (8, 8)))
    np.testing.assert_allclose(boxes[..., 0], np.where(np.asarray(batch["masks"][:, 0]) > 0, 1.1, 1.0), rtol=1e-6)
    latent = kn.Knowledge(region_fraction=1.0).region_weights(batch, jax.random.PRNGKey(0), (4, 4))
    np.testing.assert_allclose(np.asarray(latent)[0, :2, :2, 0], 1.1, rtol=1e-6)  # resized to the latents


def test_key_tokens_skip_dropped_captions_and_undrawn_examples():
    batch = _batch(b=64)
    keep = jnp.arange(64) % 2 == 0
    m = np.asarray(kn.Knowledge().key_token_weights(batch, jax.random.PRNGKey(0), keep))
    assert not m[1::2].any()
    drawn = m[::2].any(axis=1)
    assert 0.25 < drawn.mean() < 0.75
    np.testing.assert_array_equal(m[::2][drawn], np.asarray(batch["key_token_mask"][:32][drawn]))
    assert kn.Knowledge(key_tokens=False).key_token_weights(batch, jax.random.PRNGKey(0), keep) is None


def test_knowledge_config_errors():
    with pytest.raises(ValueError, match="key_placement"):
        kn.Knowledge(key_placement="before")
    with pytest.raises(ValueError, match="unknown fields"):
        kn.Knowledge.from_config({"w_a": 0.1})
    assert kn.Knowledge.from_config({"enabled": False}) is None
    with pytest.raises(ValueError, match="with_regions"):
        kn.Knowledge().check_data({"with_regions": False})


@pytest.fixture(scope="module")
def tiny_method():
    from t2ijax.methods.txt2img import Txt2ImgMethod

    config = load_config("configs/knowledge_shapes.py:tiny")
    method = Txt2ImgMethod(config)
    rng = np.random.default_rng(0)  # host-drawn params: no init compilation
    ids = jnp.zeros((1, method.max_length), jnp.int32)
    width = method.text_encoder.config.hidden_size
    params = {"text_encoder": random_frozen_params(method.text_encoder, rng, ids, jnp.ones_like(ids)),
              "unet": random_frozen_params(method.unet, rng, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)),
                                           jnp.zeros((1, method.max_length, width)))}
    return method, config, params


def test_knowledge_loss_switches(tiny_method):
    method, config, params = tiny_method
    b, length = 4, method.max_length
    batch = {**_batch(b, 32, length), "image": jax.random.uniform(jax.random.PRNGKey(3), (b, 32, 32, 3)) * 2 - 1,
             "input_ids": jnp.asarray(np.tile(method.tokens(["a red circle"])[0][0], (b, 1))),
             "attention_mask": jnp.asarray(np.tile(method.tokens(["a red circle"])[1][0], (b, 1)))}
    batch["masks"] = jnp.ones((b, 4, 32, 32))
    rng = jax.random.PRNGKey(5)
    full, grads = jax.jit(jax.value_and_grad(lambda p: method.loss(p, {}, batch, rng)[0]))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    method.knowledge = kn.Knowledge(key_fraction=0.0, region_fraction=0.0)
    off = float(jax.jit(lambda p, k: method.loss(p, {}, batch, k)[0])(params, rng))
    method.knowledge = None
    plain = float(jax.jit(lambda p, k: method.loss(p, {}, batch, k)[0])(params, rng))
    assert off == pytest.approx(plain, rel=1e-6)  # nothing drawn = plain training, same noise draws
    method.knowledge = kn.Knowledge(key_fraction=0.0, region_fraction=1.0, region_weight=1.0)
    doubled = float(jax.jit(lambda p, k: method.loss(p, {}, batch, k)[0])(params, rng))
    assert doubled == pytest.approx(2 * plain, rel=1e-5)  # masks everywhere: weight 1 + w_l = 2
    method.knowledge = kn.Knowledge.from_config(config.model.knowledge)
    assert float(full) != plain


def test_painted_sampling_with_zero_weight_is_unpainted_and_every_sampler_runs(tiny_method):
    method, _, params = tiny_method
    prompts = ["a red circle and a blue square"] * 2
    paint = [_two_phrase_paint(32), None]
    base = method.sample(params, {}, prompts, seeds=[0, 1], num_steps=2)
    zero = method.sample(params, {}, prompts, seeds=[0, 1], num_steps=2, paint=paint, paint_scale=0.0)
    np.testing.assert_array_equal(base, zero)
    strong = method.sample(params, {}, prompts, seeds=[0, 1], num_steps=2, paint=paint, paint_scale=50.0)
    assert np.abs(strong[0].astype(int) - base[0]).max() > 0
    np.testing.assert_array_equal(strong[1], base[1])  # no paint for image 1
    cond, uncond = method.paint_cond(jnp.zeros((2, method.max_length, 4)), jnp.zeros((2, method.max_length, 4)),
                                     prompts, paint, 3.0)
    assert not np.asarray(uncond["paint"]).any() and np.asarray(cond["paint"][0]).any()  # CFG's null: no paint
    for name in ("euler", "heun"):
        method.sampler_name = name
        try:
            out = method.sample(params, {}, prompts, seeds=[0, 1], num_steps=2, paint=paint, paint_scale=50.0)
        finally:
            method.sampler_name = "ddim"
        assert out.shape == (2, 32, 32, 3)


def test_cli_sample_paints_from_a_segmentation_image_and_rejects_bad_maps(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from PIL import Image

    seg = np.full((32, 32, 3), 255, np.uint8)
    seg[:16, :16] = (255, 0, 0)
    Image.fromarray(seg).save(tmp_path / "mask.png")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def cli(*extra):
        return subprocess.run([sys.executable, "-m", "t2ijax", "sample", "--config=configs/demo_shapes.py:tiny",
                               "--random_init", "--prompt=a red circle", "--num_steps=2", *extra],
                              capture_output=True, text=True, cwd=repo, timeout=600,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})

    bad = cli(f"--paint={tmp_path / 'mask.png'}", '--paint-map={"#ff0000": "blue square,1"}')
    assert bad.returncode == 2 and "'blue square' does not occur in the prompt" in bad.stderr
    out = tmp_path / "painted.png"
    ok = cli(f"--paint={tmp_path / 'mask.png'}", '--paint-map={"#ff0000": "red circle,0.5"}', "--paint_scale=2",
             f"--out={out}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    record = json.load(open(tmp_path / "painted.json"))
    assert record["sampler"]["paint"] == {"phrases": ["red circle"], "strengths": [0.5], "scale": 2.0}


def test_sd_sigma_switch_uses_stable_diffusions_schedule_whatever_the_model():
    from t2ijax.diffusion import DiscreteSchedule

    cosine = DiscreteSchedule(beta_schedule="squaredcos_cap_v2")
    sd = DiscreteSchedule(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    t = jnp.array([100.0, 900.0])
    np.testing.assert_allclose(pw.ddpm_sigma(cosine, t, pw.PaintSettings(sigma="sd")), sd.sigmas[[100, 900]], rtol=1e-6)
    assert not np.allclose(pw.ddpm_sigma(cosine, t), sd.sigmas[[100, 900]])
