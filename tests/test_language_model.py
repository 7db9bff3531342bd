"""The language-model method (t2ijax/methods/language_model.py): span corruption, the causal loss's padding,
tiny runs of both objectives through the one train loop, and the export -> load_text_encoder round trip
(with parity against transformers' LlamaForCausalLM / T5ForConditionalGeneration logits)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t2ijax.config_utils import load_config
from t2ijax.data import shapes
from t2ijax.data.tokenizer import load_tokenizer, tokenize
from t2ijax.methods.language_model import causal_lm_nll, span_corruption, span_target_length

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTINELS = np.arange(105, 89, -1, dtype=np.int32)  # <extra_id_k> = 105 - k on top of shapes_word's 90 ids


def shapes_captions(n, kind="dense"):
    out = []
    for i in range(n):
        scene = shapes.sample_scene(0, "train", i, 32)
        if kind == "dense":
            out.append(shapes.dense_caption(scene).text)
        elif kind == "short":
            out.append(shapes.short_caption(scene).text)
        else:
            out.append(shapes.narrative_caption(scene, np.random.default_rng(i)).text)
    return out


@jax.jit
def _corrupt(key, ids, mask):
    return span_corruption(key, ids, mask, sentinel_ids=SENTINELS, special_ids=[0, 1, 2], eos_id=2, pad_id=0)


def corrupt(key, tok):
    return _corrupt(key, jnp.asarray(tok["input_ids"]), jnp.asarray(tok["attention_mask"]))


def test_span_corruption_is_valid_deterministic_and_15_percent():
    tokenizer = load_tokenizer("shapes_word")
    caps = shapes_captions(40, "dense") + shapes_captions(40, "narrative") + shapes_captions(40, "short")
    tok = tokenize(tokenizer, caps, 100)
    out = jax.device_get(corrupt(jax.random.PRNGKey(0), tok))
    again = jax.device_get(corrupt(jax.random.PRNGKey(0), tok))
    other = jax.device_get(corrupt(jax.random.PRNGKey(1), tok))
    for k in out:
        np.testing.assert_array_equal(out[k], again[k])  # deterministic under the key
    assert not np.array_equal(out["input_ids"], other["input_ids"])
    assert out["labels"].shape[1] == span_target_length(100)
    n_spans = []
    for i, ids in enumerate(tok["input_ids"]):
        orig = ids[tok["attention_mask"][i] == 1].tolist()
        inp = out["input_ids"][i][out["attention_mask"][i] == 1].tolist()
        lab = out["labels"][i][out["labels_mask"][i] == 1].tolist()
        assert (out["input_ids"][i][out["attention_mask"][i] == 0] == 0).all()  # padded with [PAD]
        assert lab[-1] == 2 and 2 not in lab[:-1]  # one [EOS], last
        # sentinels: 0, 1, 2, ... in order, each once in the input and once in the targets
        in_sent = [t for t in inp if t in SENTINELS]
        lab_sent = [t for t in lab if t in SENTINELS]
        assert in_sent == lab_sent == SENTINELS[:len(in_sent)].tolist() and len(in_sent) >= 1
        # targets: every sentinel is followed by a non-empty span
        spans, cur = [], None
        for t in lab[:-1]:
            if t in SENTINELS:
                cur = []
                spans.append(cur)
            else:
                cur.append(t)
        assert all(len(s) >= 1 for s in spans) and lab[0] == SENTINELS[0]
        # putting the spans back in place of the sentinels gives the caption back
        rebuilt = []
        for t in inp:
            rebuilt += spans[int(SENTINELS[0] - t)] if t in SENTINELS else [t]
        assert rebuilt == orig, (i, rebuilt, orig)
        assert inp[0] == 1 and inp[-1] == 2  # [BOS] and [EOS] are never corrupted
        n_spans.append(len(spans))
        noise, content = int(out["noise_mask"][i].sum()), int(out["content_mask"][i].sum())
        assert noise == max(1, min(int(np.round(content * 0.15)), content - 1))
        assert len(spans) == max(1, min(int(np.round(noise / 3.0)), noise))
    frac = out["noise_mask"].sum() / out["content_mask"].sum()
    mean_span = out["noise_mask"].sum() / sum(n_spans)
    print(f"span corruption: {frac:.3f} of content tokens corrupted, mean span length {mean_span:.2f}")
    assert 0.13 < frac < 0.17 and 2.0 < mean_span < 4.0


def test_causal_loss_ignores_padding():
    tokenizer = load_tokenizer("shapes_word")
    caps = shapes_captions(4, "short")
    rng = np.random.default_rng(0)
    logits20 = rng.standard_normal((4, 20, 90)).astype(np.float32)
    t20, t40 = tokenize(tokenizer, caps, 20), tokenize(tokenizer, caps, 40)
    logits40 = np.concatenate([logits20, rng.standard_normal((4, 20, 90)).astype(np.float32)], axis=1)
    s20, n20 = causal_lm_nll(logits20, t20["input_ids"], t20["attention_mask"])
    s40, n40 = causal_lm_nll(logits40, t40["input_ids"], t40["attention_mask"])
    assert float(n20) == float(n40) == float(t20["attention_mask"].sum() - 4)
    np.testing.assert_allclose(float(s20), float(s40), rtol=1e-6)
    # the model: garbage in the padded positions does not change the loss
    from t2ijax.methods import get_method

    config = load_config(os.path.join(REPO, "configs", "lm_shapes.py:tiny_llama"), [])
    method = get_method(config.method, config)
    from flax import linen as nn

    params = nn.meta.unbox(jax.jit(lambda k: method.init(k, config))(jax.random.PRNGKey(0)))
    ids, mask = jnp.asarray(t40["input_ids"]), jnp.asarray(t40["attention_mask"])
    junk = jnp.where(mask == 1, ids, jnp.asarray(rng.integers(3, 90, ids.shape), jnp.int32))
    f = jax.jit(lambda p, i: method.nll(p, i, mask))
    (a, na), (b, nb) = f(params, ids), f(params, junk)
    assert float(na) == float(nb) == float(n40)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


# ------------------------------------------------------------------------------------------- tiny runs

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(variant, data_dir, **overrides):
    args = ["total_steps=6", "log_every=1", "checkpoint_every=6", "progress=False", "tensorboard=False",
            "optim.lr=0.003", f"data.data_dir={data_dir}", "data.num_train=32", "data.num_val=8",
            "data.num_test=8", "data.read_threads=0"]
    return load_config(os.path.join(REPO, "configs", f"lm_shapes.py:{variant}"),
                       args + [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_t5"])
def run(request, data_dir, tmp_path_factory):
    from t2ijax.train import loop

    workdir = str(tmp_path_factory.mktemp(request.param))
    config = tiny_config(request.param, data_dir)
    state = loop.train(config, workdir)
    return request.param, config, workdir, state


def test_tiny_run_loss_falls(run):
    variant, config, workdir, state = run
    assert int(state.step) == 6
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    losses = [r["loss"] for r in rows if "loss" in r]
    print(f"{variant} losses", [round(x, 3) for x in losses])
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < losses[0] - 0.1
    last = [r for r in rows if "loss" in r][-1]
    for kind in ("dense", "short", "narrative"):  # all three caption kinds in every batch
        assert last[f"tokens_{kind}"] > 0 and np.isfinite(last[f"nll_{kind}"])


def test_export_round_trip(run, tmp_path):
    import torch
    import transformers as T

    from t2ijax.train.sampling import load_for_inference
    from t2ijax.weights import load_text_encoder

    variant, config, workdir, _ = run
    method, params, _, _ = load_for_inference(config, workdir)
    written = method.export(params, str(tmp_path))
    folder = written[0]
    assert os.path.basename(folder) == ("llama" if variant == "tiny_llama" else "t5")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(folder))
    tok = load_tokenizer(folder)
    caps = shapes_captions(3, "narrative")
    t = tokenize(tok, caps, 100)
    np.testing.assert_array_equal(t["input_ids"], tokenize(method.tokenizer, caps, 100)["input_ids"])
    ids, mask = jnp.asarray(t["input_ids"]), jnp.asarray(t["attention_mask"])
    module, loaded = load_text_encoder(folder)
    ours = np.asarray(jax.jit(method.features)(params, ids, mask))
    theirs = np.asarray(jax.jit(module.apply)({"params": loaded}, ids, mask))
    np.testing.assert_array_equal(ours, theirs)  # the same hidden states, bit for bit
    print(f"{variant}: export -> load_text_encoder hidden states identical, shape {theirs.shape}")

    # the full LM layout: transformers' model gives our logits
    ti, tm = torch.from_numpy(t["input_ids"].astype(np.int64)), torch.from_numpy(t["attention_mask"].astype(np.int64))
    valid = t["attention_mask"].astype(bool)
    if variant == "tiny_llama":
        hf = T.LlamaForCausalLM.from_pretrained(folder).eval()
        logits = np.asarray(jax.jit(method.model.apply)({"params": params}, ids, mask))
        with torch.no_grad():
            ref = hf(input_ids=ti, attention_mask=tm).logits.numpy()
        ours_v, ref_v = logits[valid], ref[valid]
    else:
        sentinels = tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>"])
        assert sentinels == method.sentinel_ids[:2].tolist()
        c = jax.device_get(jax.jit(method.corrupt)(jax.random.PRNGKey(0), ids, mask))
        from t2ijax.methods.language_model import shift_right

        dec = np.asarray(shift_right(jnp.asarray(c["labels"]), 0))
        logits = np.asarray(jax.jit(method.model.apply)({"params": params}, c["input_ids"], c["attention_mask"],
                                                        dec, c["labels_mask"]))
        hf = T.T5ForConditionalGeneration.from_pretrained(folder).eval()
        with torch.no_grad():
            ref = hf(input_ids=torch.from_numpy(c["input_ids"].astype(np.int64)),
                     attention_mask=torch.from_numpy(c["attention_mask"].astype(np.int64)),
                     decoder_input_ids=torch.from_numpy(dec.astype(np.int64))).logits.numpy()
        lvalid = c["labels_mask"].astype(bool)
        ours_v, ref_v = logits[lvalid], ref[lvalid]
    err = float(np.abs(ours_v - ref_v).max())
    print(f"{variant}: logits vs transformers max|diff| {err:.2e} (max|ref| {np.abs(ref_v).max():.2e})")
    assert err <= 1e-4 * max(1.0, float(np.abs(ref_v).max()))


def test_packed_and_per_kind_losses_agree(run):
    """model.pack_captions (one padded forward, the tiny variants) and one forward per caption kind (the real
    variants) give the same loss (span corruption: the same draw), padding masked everywhere."""
    from t2ijax.methods import get_method

    variant, config, _, state = run
    params = jax.device_get(state.params)
    caps = {"short": (shapes_captions(4, "short"), 20), "narrative": (shapes_captions(4, "narrative"), 100)}
    losses = {}
    for pack in (True, False):
        c = config.copy_and_resolve_references()
        c.model.pack_captions, c.model.captions = pack, ("short", "narrative")
        method = get_method(c.method, c)
        batch = {}
        for name, prefix, length in method.captions:
            t = tokenize(method.tokenizer, caps[name][0], caps[name][1])
            batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"] = t["input_ids"], t["attention_mask"]
        losses[pack] = jax.device_get(jax.jit(lambda p, b: method.loss(p, {}, b, jax.random.PRNGKey(3)))(params, batch))
    (a, ma), (b, mb) = losses[True], losses[False]
    print(f"{variant} loss packed {float(a):.6f}, per kind {float(b):.6f}")
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    for k in ma:
        np.testing.assert_allclose(float(ma[k]), float(mb[k]), rtol=1e-5, err_msg=k)
