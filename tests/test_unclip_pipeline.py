"""The unCLIP path on Shapes: a CLIP export -> cached features -> ECLIPSE prior -> image-embedding decoder ->
``t2ijax sample``-style sampling from text, with tiny random models (the trained ones are in experiments/eclipse)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax.config_utils import load_config
from t2ijax.data.clip_features import build_clip_feature_cache
from t2ijax.data.tokenizer import load_tokenizer
from t2ijax.methods import get_method
from t2ijax.methods.unclip import clip_pixels_jax
from t2ijax.models.text.clip import CLIPModel, CLIPTextConfig, CLIPVisionConfig
from t2ijax.train import loop
from t2ijax.train.sampling import load_for_inference
from t2ijax.weights import load_eclipse_prior, save_text_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = 32


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A random tiny CLIPModel export whose text width equals its projection (what a prior needs)."""
    out = tmp_path_factory.mktemp("clip")
    tok = load_tokenizer("shapes_word", 80)
    text = CLIPTextConfig(vocab_size=len(tok), hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=80, hidden_act="gelu",
                          eos_token_id=tok.eos_token_id, projection_dim=WIDTH)
    vision = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, hidden_act="gelu")
    module = CLIPModel(text, vision, projection_dim=WIDTH)
    ids = jnp.zeros((1, 80), jnp.int32)
    params = module.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids), jnp.zeros((1, 32, 32, 3)))["params"]
    params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
    save_text_encoder(module, params, str(out))
    tok.save_pretrained(str(out))
    return str(out)


def test_clip_pixels_jax_matches_the_eval_preprocessing():
    from t2ijax.eval.clip_score import clip_pixels

    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_allclose(np.asarray(clip_pixels_jax(jnp.asarray(images / 127.5 - 1.0), 32)),
                               clip_pixels(images, 32), atol=1e-5)


def test_text_to_prior_to_decoder(clip_dir, tmp_path):
    common = ["progress=False", "tensorboard=False", "async_checkpointing=False"]
    eclipse = load_config(f"{REPO}/configs/eclipse_shapes.py:variant=tiny,clip={clip_dir},features={tmp_path}/f",
                          common)
    method = get_method("eclipse", eclipse)
    written = method.prepare(eclipse)  # builds the three caches with the CLIP
    assert len(written) == 3 and all(os.path.exists(p) for p in written)
    loop.train(eclipse, str(tmp_path / "prior_run"))
    _, params, _, _ = load_for_inference(eclipse, str(tmp_path / "prior_run"))
    prior_dir = method.export(params, str(tmp_path / "prior_export"))[0]
    assert load_eclipse_prior(prior_dir)[0].embedding_dim == WIDTH

    decoder = load_config(f"{REPO}/configs/unclip_shapes.py:variant=tiny,clip={clip_dir},prior={prior_dir}", common)
    loop.train(decoder, str(tmp_path / "decoder_run"))
    unclip, dparams, frozen, _ = load_for_inference(decoder, str(tmp_path / "decoder_run"))
    prompts = ["a red circle", "a big blue square left of a small green triangle"]
    images = unclip.sample(dparams, frozen, prompts, seeds=[3, 4])
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    again = unclip.sample(dparams, frozen, prompts[:1], seeds=[3])
    np.testing.assert_array_equal(images[:1], again)  # image i from seed i alone
    # the prior's embedding is what conditions the decoder: another embedding gives another image
    other = unclip.sample(dparams, frozen, prompts[:1], seeds=[3], image_embeds=jnp.zeros((1, WIDTH)) + 5.0)
    assert np.abs(other.astype(int) - images[:1].astype(int)).max() > 0
    # the negative prompt through the prior (Kandinsky's pipeline with a negative prompt) also runs
    unclip.negative = "empty_prompt"
    assert unclip.sample(dparams, frozen, prompts[:1], seeds=[3]).shape == (1, 32, 32, 3)


def test_decoder_refuses_bad_setups(clip_dir):
    cfg = load_config(f"{REPO}/configs/unclip_shapes.py:variant=tiny,clip={clip_dir}")
    method = get_method("unclip", cfg)
    with pytest.raises(ValueError, match="model.prior"):
        method.sample(None, method.frozen(cfg), ["a red circle"], seeds=[0])
    with pytest.raises(ValueError, match="negative"):
        get_method("unclip", load_config(f"{REPO}/configs/unclip_shapes.py:variant=tiny,clip={clip_dir}",
                                         ["model.negative=text"]))
    with pytest.raises(ValueError, match="encoder_hid_dim"):
        get_method("unclip", load_config(f"{REPO}/configs/unclip_shapes.py:variant=tiny,clip={clip_dir}",
                                         ["model.unet.encoder_hid_dim=7"]))
