"""Per-image seeds: an image's initial noise, hence (deterministic DDIM) the image, depends on its own seed only."""

import os

import jax
import numpy as np
import pytest

from t2ijax.config_utils import import_sibling
from t2ijax.methods import get_method
from t2ijax.train.sampling import initial_noise, make_sampler, regenerated_matches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
common = import_sibling(os.path.join(REPO, "configs", "common.py"), "common")


def test_initial_noise_row_is_a_function_of_its_seed():
    x = initial_noise(3, (4, 4, 3), seeds=[5, 9, 5])
    assert x.shape == (3, 4, 4, 3)
    for row, seed in zip(x, [5, 9, 5]):
        np.testing.assert_array_equal(row, jax.random.normal(jax.random.PRNGKey(seed), (4, 4, 3)))
    batch = initial_noise(2, (6,), rng=jax.random.PRNGKey(0))  # the one-key form draws the batch together
    np.testing.assert_array_equal(batch, jax.random.normal(jax.random.PRNGKey(0), (2, 6)))
    with pytest.raises(ValueError, match="1 seeds for 2 images"):
        initial_noise(2, (6,), seeds=[1])
    with pytest.raises(ValueError, match="exactly one of seeds"):
        initial_noise(2, (6,))
    with pytest.raises(ValueError, match="exactly one of seeds"):
        initial_noise(2, (6,), seeds=[1, 2], rng=jax.random.PRNGKey(0))


class _Recorder:
    """A method whose sample() records its arguments and returns the seeds as images."""

    sample_steps, guidance_scale = 7, 3.0

    def __init__(self):
        self.calls = []

    def sample(self, params, frozen, prompts, rng=None, *, seeds=None, num_steps=None, guidance_scale=None):
        self.calls.append((list(prompts), list(seeds), num_steps, guidance_scale))
        return np.asarray(seeds, np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)


def test_make_sampler_conditional_and_unconditional():
    method = _Recorder()
    conditional = make_sampler(method, {}, {}, num_steps=3)
    unconditional = make_sampler(method, {}, {}, unconditional=True)
    images = conditional(["a", "b"], np.array([4, 5]))
    assert images[:, 0, 0, 0].tolist() == [4, 5]
    unconditional(["a", "b"], [4, 5])
    assert method.calls == [(["a", "b"], [4, 5], 3, None), (["", ""], [4, 5], None, 1.0)]
    assert conditional.settings == {"num_steps": 3, "guidance_scale": 3.0, "unconditional": False}
    assert unconditional.settings == {"num_steps": 7, "guidance_scale": 1.0, "unconditional": True}
    with pytest.raises(ValueError, match="1 seeds for 2 prompts"):
        conditional(["a", "b"], [4])
    with pytest.raises(ValueError, match="guidance_scale 1"):
        make_sampler(method, {}, {}, unconditional=True, guidance_scale=3.0)
    with pytest.raises(ValueError, match="has no sample"):
        make_sampler(object(), {}, {})


def test_toy_image_depends_on_its_prompt_and_seed_only():
    config = common.toy_config()
    method = get_method("toy", config)
    params = method.init(jax.random.PRNGKey(0), config)
    sampler = make_sampler(method, params, {}, num_steps=4)
    batch = sampler(["red square", "blue circle", "green square"], [10, 11, 12])
    alone = sampler(["blue circle"], [11])
    other_company = sampler(["blue circle", "red square"], [11, 3])
    print(f"toy, regenerated alone / with other neighbours: bit-identical {np.array_equal(alone[0], batch[1])} / "
          f"{np.array_equal(other_company[0], batch[1])}")
    assert regenerated_matches(batch[1], alone[0]) and regenerated_matches(batch[1], other_company[0])
    assert not regenerated_matches(batch[0], batch[2])


def test_regenerated_matches_allows_rounding_flips_only():
    image = np.random.default_rng(0).integers(1, 255, (32, 32, 3), dtype=np.uint8)
    flipped = image.copy()
    flipped[0, 0, 0] += 1  # one value of 3,072 rounded the other way
    assert regenerated_matches(image, image) and regenerated_matches(image, flipped)
    off_by_two = image.copy()
    off_by_two[0, 0, 0] += 2
    assert not regenerated_matches(image, off_by_two)
    assert not regenerated_matches(image, np.clip(image.astype(int) + 1, 0, 255).astype(np.uint8))  # every value
    assert not regenerated_matches(image, image[:16])
