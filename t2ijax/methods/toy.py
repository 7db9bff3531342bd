"""A toy text-conditioned MLP denoiser: the smallest complete method (tests, benchmarks, smoke runs).

Pixel-space epsilon prediction on flattened images with a continuous cosine schedule,
conditioned on the masked mean of a learned token embedding. `config.model`:
``width`` (token embedding), ``hidden`` (MLP width), ``depth`` (hidden layers), ``teacher_hidden``
(> 0: a frozen, randomly initialised teacher of that width whose prediction the student also matches, a
stand-in for the frozen models of the real methods; built straight onto its shardings).
Every parameter carries logical axes, so it exercises the sharding rules. The loss takes the step
(the loop passes it to a loss that asks for it): the teacher term fades in over the first 10 steps.
"""

from __future__ import annotations

import math
import zlib
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t2ijax import sharding as shd
from t2ijax.models import layers
from t2ijax.train.sampling import initial_noise


class ToyDenoiser(nn.Module):
    vocab_size: int
    width: int
    hidden: int
    depth: int
    pixels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_flat, t, input_ids, attention_mask):
        emb = layers.Embed(self.vocab_size, self.width, dtype=self.dtype, name="token_embedding")(input_ids)
        m = attention_mask.astype(self.dtype)[..., None]
        text = (emb * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        freqs = jnp.exp(-math.log(1000.0) * jnp.arange(self.width // 2) / (self.width // 2))
        temb = jnp.concatenate([jnp.sin(t[:, None] * 1000 * freqs), jnp.cos(t[:, None] * 1000 * freqs)], -1)
        h = jnp.concatenate([x_flat.astype(self.dtype), text, temb.astype(self.dtype)], -1)
        h = layers.Dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="in_proj")(h)
        for i in range(self.depth):
            h = h + layers.Dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name=f"hidden.{i}")(nn.silu(h))
        return layers.Dense(self.pixels, ("mlp", "embed"), dtype=self.dtype, name="out_proj")(nn.silu(h))


class ToyMethod:
    """Method interface (t2ijax.train.method) for `ToyDenoiser`."""

    def __init__(self, config):
        r = int(config.data.resolution)
        self.pixels = r * r * 3
        self.module = ToyDenoiser(vocab_size=int(config.data.vocab_size), width=int(config.model.width),
                                  hidden=int(config.model.hidden), depth=int(config.model.depth), pixels=self.pixels,
                                  dtype=jnp.dtype(config.compute_dtype))
        self.max_length = int(config.data.max_length)
        self.vocab_size = int(config.data.vocab_size)
        teacher = int(config.model.get("teacher_hidden", 0))
        self.teacher = (ToyDenoiser(vocab_size=self.vocab_size, width=int(config.model.width), hidden=teacher,
                                    depth=int(config.model.depth), pixels=self.pixels) if teacher else None)
        width, hidden, depth = int(config.model.width), int(config.model.hidden), int(config.model.depth)
        fwd = 2 * ((self.pixels + 2 * width) * hidden + depth * hidden * hidden + hidden * self.pixels)
        self.flops_per_example = 3.0 * fwd

    def _init(self, module, rng):
        x = jnp.zeros((1, self.pixels))
        ids = jnp.zeros((1, self.max_length), jnp.int32)
        return module.init(rng, x, jnp.zeros((1,)), ids, jnp.ones_like(ids))["params"]

    def init(self, rng, config):
        return self._init(self.module, rng)

    def frozen(self, config, shard_config=None):
        if self.teacher is None:
            return {}
        init = partial(self._init, self.teacher)
        rng = jax.random.PRNGKey(int(config.seed) + 1)
        if shard_config is None:
            return {"teacher": init(rng)}
        return {"teacher": shd.init_sharded(init, rng, shard_config)[0]}

    def loss(self, params, frozen, batch, rng, step=None):
        x0 = batch["image"].reshape(batch["image"].shape[0], -1)
        t_key, n_key = jax.random.split(rng)
        t = jax.random.uniform(t_key, (x0.shape[0],))
        eps = jax.random.normal(n_key, x0.shape)
        alpha, sigma = jnp.cos(t * math.pi / 2)[:, None], jnp.sin(t * math.pi / 2)[:, None]
        pred = self.module.apply({"params": params}, alpha * x0 + sigma * eps, t, batch["input_ids"],
                                 batch["attention_mask"])
        loss = jnp.mean((pred.astype(jnp.float32) - eps) ** 2)
        metrics = {"x0_std": jnp.std(x0)}
        if "teacher" in frozen:
            target = self.teacher.apply({"params": frozen["teacher"]}, alpha * x0 + sigma * eps, t,
                                        batch["input_ids"], batch["attention_mask"])
            weight = jnp.minimum(1.0, (step if step is not None else 10) / 10.0)
            metrics["teacher_loss"] = jnp.mean((pred.astype(jnp.float32) - target) ** 2)
            loss = loss + weight * metrics["teacher_loss"]
        return loss, metrics


    def tokenize(self, prompts):
        """Word ids by CRC32 hash into the vocabulary (id 0 is padding); the toy has no real tokenizer."""
        ids = np.zeros((len(prompts), self.max_length), np.int32)
        for i, prompt in enumerate(prompts):
            words = [1 + zlib.crc32(w.encode()) % (self.vocab_size - 1) for w in prompt.lower().split()]
            ids[i, :len(words[:self.max_length])] = words[:self.max_length]
        return ids, (ids > 0).astype(np.int32)

    def sample(self, params, frozen, prompts, rng=None, *, seeds=None, num_steps: int | None = None,
               guidance_scale=None):
        """Deterministic DDIM on the cosine schedule (no guidance): uint8 images (N, r, r, 3), the initial
        noise from `seeds` (one per prompt) or one key `rng` (`t2ijax.train.sampling.initial_noise`)."""
        ids, mask = self.tokenize(prompts)
        steps = int(num_steps or 10)
        x = initial_noise(len(prompts), (self.pixels,), seeds=seeds, rng=rng)
        x = _ddim(self.module, params, x, jnp.asarray(ids), jnp.asarray(mask), steps)
        r = int(round((self.pixels // 3) ** 0.5))
        return np.asarray(jnp.clip((x + 1) * 127.5, 0, 255).round().astype(jnp.uint8)).reshape(-1, r, r, 3)


@partial(jax.jit, static_argnums=(0, 5))
def _ddim(module, params, x, ids, mask, steps):
    ts = jnp.linspace(1.0, 0.0, steps + 1)

    def body(i, x):
        t, t_next = ts[i], ts[i + 1]
        eps = module.apply({"params": params}, x, jnp.full((x.shape[0],), t), ids, mask).astype(jnp.float32)
        a, s = jnp.cos(t * math.pi / 2), jnp.sin(t * math.pi / 2)
        x0 = jnp.clip((x - s * eps) / jnp.maximum(a, 1e-3), -1, 1)
        return jnp.cos(t_next * math.pi / 2) * x0 + jnp.sin(t_next * math.pi / 2) * eps
    return jax.lax.fori_loop(0, steps, body, x)


def make_method(config) -> ToyMethod:
    return ToyMethod(config)
