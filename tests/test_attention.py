"""`attention`: the xla, matmul and fused impls against a float64 numpy reference, in float32, float16, bfloat16.

The fused impl (`jax.nn.dot_product_attention`, the GPU/TPU default) runs on the CPU too, so its masking is
checked here without an accelerator: padding masks, causality, biases, grouped-query heads, fully masked rows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax.models import attention as attention_module
from t2ijax.models.attention import MASK_VALUE, attention, attention_impl, set_attention_impl

DTYPES = [jnp.float32, jnp.float16, jnp.bfloat16]
IMPLS = ["xla", "matmul", "fused"]
# max |error| on O(1) outputs: the probabilities are rounded to the compute dtype before they meet v
TOL = {jnp.float32: 1e-5, jnp.float16: 2e-3, jnp.bfloat16: 2e-2}


def reference(q, k, v, bias=None, mask=None, causal=False):
    """float64 attention with the documented semantics: biases floored at MASK_VALUE, softmax over the
    visible keys, and the mean of v over all keys for a row that sees none."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    k, v = (np.repeat(x, q.shape[2] // x.shape[2], axis=2) for x in (k, v))
    lq, lk = q.shape[1], k.shape[1]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    visible = np.ones(logits.shape, bool)
    if bias is not None:
        logits = logits + np.maximum(np.asarray(bias, np.float64), MASK_VALUE)
    if mask is not None:
        visible &= np.asarray(mask, bool)
    if causal:
        visible &= np.tril(np.ones((lq, lk), bool), k=lk - lq)
    logits = np.where(visible, logits, -np.inf)
    seen = visible.any(-1, keepdims=True)
    weights = np.exp(logits - np.where(seen, logits.max(-1, keepdims=True), 0.0))
    probs = np.where(seen, weights / np.maximum(weights.sum(-1, keepdims=True), 1e-300), 1.0 / lk)
    return np.einsum("bhqk,bkhd->bqhd", probs, v)


def padding_mask(lengths, lk):
    """(B, 1, 1, Lk), True for the first `length` keys of each batch row."""
    return (np.arange(lk)[None, :] < np.asarray(lengths)[:, None])[:, None, None, :]


def qkv(lq=5, lk=6, heads=4, kv_heads=4, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((2, lq, heads, dim)), rng.standard_normal((2, lk, kv_heads, dim)),
            rng.standard_normal((2, lk, kv_heads, dim)))


def _bias_hook_row(lq, lk):
    """A bias that masks the last 2 keys with MASK_VALUE (the U-Net bias hook's convention)."""
    return np.where(np.arange(lk) >= lk - 2, MASK_VALUE, 0.0)[None, None, None, :].repeat(lq, axis=2)


CASES = {
    "padding": lambda: (qkv(), dict(mask=padding_mask([6, 3], 6))),
    "causal": lambda: (qkv(lq=5, lk=5), dict(causal=True)),
    "causal_cross": lambda: (qkv(lq=3, lk=6), dict(causal=True, mask=padding_mask([6, 4], 6))),
    "bias_and_mask": lambda: (qkv(), dict(bias=2 * np.random.default_rng(1).standard_normal((1, 4, 5, 6)),
                                          mask=padding_mask([5, 2], 6))),
    "bias_hook": lambda: (qkv(), dict(bias=_bias_hook_row(5, 6))),
    "grouped_query": lambda: (qkv(kv_heads=2), dict(mask=padding_mask([6, 4], 6), causal=True)),
    "multi_query": lambda: (qkv(kv_heads=1), dict(bias=np.random.default_rng(2).standard_normal((2, 1, 5, 6)))),
    # batch 1 sees no key; in batch 0, left padding + causality leaves queries 0-1 without a key
    "fully_masked": lambda: (qkv(lq=5, lk=5), dict(mask=np.stack([np.arange(5) >= 2, np.zeros(5, bool)])
                                                   [:, None, None, :], causal=True)),
    # rows masked through the bias alone: MASK_VALUE everywhere, or -inf (floored to MASK_VALUE)
    "fully_masked_bias": lambda: (qkv(), dict(bias=np.where(np.arange(5)[:, None] < 2,
                                                            np.array([MASK_VALUE, -np.inf])[:, None, None, None],
                                                            np.zeros(6)), mask=padding_mask([6, 6], 6))),
}


def _run(case, dtype, impl):
    (q, k, v), kw = CASES[case]()
    q, k, v = (jnp.asarray(x, jnp.float32).astype(dtype) for x in (q, k, v))
    out = attention(q, k, v, impl=impl, **kw)
    ref = reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), **kw)
    return out, ref, kw


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_float64_reference(case, impl, dtype):
    out, ref, _ = _run(case, dtype, impl)
    assert out.dtype == dtype and out.shape == ref.shape
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all()
    err = float(np.abs(out - ref).max())
    print(f"{case} {impl} {dtype.__name__}: max|out - float64| = {err:.2e}")
    assert err <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", list(CASES))
def test_fused_matches_xla(case, dtype):
    fused, _, _ = _run(case, dtype, "fused")
    xla, _, _ = _run(case, dtype, "xla")
    err = float(jnp.abs(fused.astype(jnp.float32) - xla.astype(jnp.float32)).max())
    print(f"{case} {dtype.__name__}: max|fused - xla| = {err:.2e}")
    # float32 agrees to rounding; in a half dtype the two round differently (xla takes the value product in
    # float32, fused in the input dtype) and may differ by one unit in the last place of outputs near 4
    assert err <= (TOL[dtype] / 10 if dtype == jnp.float32 else TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_rows_give_the_mean_of_v(impl, dtype):
    """The documented value, in every dtype: no NaN from -inf logits, no leftover softmax of the logits."""
    for case, rows in (("fully_masked", [np.s_[0, :2], np.s_[1]]), ("fully_masked_bias", [np.s_[:, :2]])):
        out, _, _ = _run(case, dtype, impl)
        (_, _, v), _ = CASES[case]()
        v = np.asarray(jnp.asarray(v, jnp.float32).astype(dtype), np.float64)
        mean_v = np.broadcast_to(v.mean(axis=1, keepdims=True), out.shape)  # (B, Lq, H, D)
        out = np.asarray(out, np.float64)
        err = max(float(np.abs(out[r] - mean_v[r]).max()) for r in rows)
        assert err <= TOL[dtype], case


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=lambda d: d.__name__)
@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_finite_with_fully_masked_rows(impl, dtype):
    (q, k, v), kw = CASES["fully_masked"]()
    q, k, v = (jnp.asarray(x, dtype) for x in (q, k, v))
    grads = jax.grad(lambda *a: attention(*a, impl=impl, **kw).astype(jnp.float32).sum(), argnums=(0, 1, 2))(q, k, v)
    assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in grads)
    assert float(jnp.abs(grads[2].astype(jnp.float32)).max()) > 0


@pytest.mark.parametrize("impl", IMPLS)
def test_float32_queries_and_keys_with_half_values(impl):
    """Upcast attention (SD 2.x) passes float32 q, k and a bfloat16 v; the result is in v's dtype."""
    (q, k, v), kw = CASES["padding"]()
    q, k = jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32)
    v = jnp.asarray(v, jnp.float32).astype(jnp.bfloat16)
    out = attention(q, k, v, impl=impl, **kw)
    assert out.dtype == jnp.bfloat16
    ref = reference(q, k, v.astype(jnp.float32), **kw)
    assert float(np.abs(np.asarray(out, np.float32) - ref).max()) <= TOL[jnp.bfloat16]


@pytest.fixture
def fused_by_default():
    previous = attention_module._override
    set_attention_impl("fused")
    yield
    set_attention_impl(previous)


def test_set_attention_impl_selects_fused(fused_by_default):
    assert attention_impl() == "fused"
    (q, k, v), kw = CASES["fully_masked"]()
    q, k, v = (jnp.asarray(x, jnp.float16) for x in (q, k, v))
    np.testing.assert_array_equal(np.asarray(attention(q, k, v, **kw)),
                                  np.asarray(attention(q, k, v, impl="fused", **kw)))
    with pytest.raises(ValueError, match="unknown attention implementation"):
        set_attention_impl("nope")


@pytest.fixture
def matmul_everywhere(monkeypatch):
    monkeypatch.setattr(attention_module, "MATMUL_MIN_LOGITS", 0)  # small test shapes take the matmul path too


@pytest.mark.parametrize("case", sorted(CASES))
def test_matmul_path_matches_float64_reference(case, matmul_everywhere):
    (q, k, v), kw = CASES[case]()
    out = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), impl="matmul", **kw)
    assert float(np.abs(np.asarray(out) - reference(q, k, v, **kw)).max()) <= TOL[jnp.float32]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matmul_impl_gradients_match_xla(dtype, matmul_everywhere):
    """The CPU default's hand-written backward (probabilities recomputed from the log-sum-exp) against
    autodiff of the einsum impl, cross-attention shapes (Lq != Lk), grouped heads."""
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal(s), dtype) for s in [(2, 24, 4, 8), (2, 10, 2, 8), (2, 10, 2, 8)])
    weights = jnp.asarray(rng.standard_normal((2, 24, 4, 8)), jnp.float32)

    def loss(impl):
        return jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, impl=impl).astype(jnp.float32) * weights),
                        argnums=(0, 1, 2))(q, k, v)

    tol = {jnp.float32: 2e-5, jnp.bfloat16: 6e-2}[dtype]
    for got, want in zip(loss("matmul"), loss("xla")):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tol, rtol=tol)


def test_matmul_is_the_cpu_default():
    assert jax.default_backend() != "cpu" or attention_impl() == "matmul"


def test_cudnn_is_registered_and_refuses_without_a_gpu():
    """The accelerator benchmark's `--attention cudnn` goes through the registry; on a CPU jax says why not."""
    q = jnp.ones((1, 8, 2, 16), jnp.bfloat16)
    if jax.default_backend() != "cpu":
        pytest.skip("the refusal is a CPU-only check")
    with pytest.raises(RuntimeError, match="cuDNN"):
        attention(q, q, q, impl="cudnn")
