"""Parity of the Flax text / image encoders with Hugging Face PyTorch at tiny random configs.

Each reference model is saved with `save_pretrained(..., safe_serialization=True)` and loaded
through the public loaders (`t2ijax.weights.load_text_encoder` / `load_clip`).
Criterion: max|ours - ref| <= 1e-4 * max|ref| over the compared positions.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as T

from t2ijax.models.layers import abstract_init
from t2ijax.weights import load_clip, load_text_encoder, load_tokenizer, save_text_encoder
from t2ijax.weights.torch_layout import WeightLoadError, read_weights, write_weights

REL_TOL = 1e-4
VOCAB = 64


def assert_close(ours, ref, what, valid=None):
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs reference {ref.shape}"
    if valid is not None:
        ours, ref = ours[valid], ref[valid]
    err, scale = float(np.abs(ours - ref).max()), float(np.abs(ref).max())
    print(f"{what}: max|ours-ref| = {err:.3e}, max|ref| = {scale:.3e}, ratio = {err / scale:.3e}")
    assert err <= REL_TOL * scale, f"{what}: max error {err} > {REL_TOL} * {scale}"


def save_hf(model, folder, **kwargs):
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return str(folder)


@pytest.fixture(scope="module")
def batch():
    """Right-padded batch: row 0 full, rows 1 and 2 padded."""
    rng = np.random.RandomState(0)
    ids = rng.randint(3, VOCAB - 2, size=(3, 11)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


def torch_run(model, ids, mask, **kwargs):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs)


TINY_T5 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
T5_CASES = {
    "t5_v1.0_relu": (T.T5EncoderModel, T.T5Config, dict(feed_forward_proj="relu")),
    "t5_v1.1_gated_gelu": (T.T5EncoderModel, T.T5Config, dict(feed_forward_proj="gated-gelu")),
    "mt5": (T.MT5EncoderModel, T.MT5Config, dict(feed_forward_proj="gated-gelu")),
    "umt5": (T.UMT5EncoderModel, T.UMT5Config, dict(feed_forward_proj="gated-gelu")),
    "t5_full_seq2seq_checkpoint": (T.T5ForConditionalGeneration, T.T5Config, dict(feed_forward_proj="gated-gelu")),
}


@pytest.fixture(scope="module")
def t5_folders(tmp_path_factory):
    out = {}
    for i, (name, (model_cls, cfg_cls, extra)) in enumerate(T5_CASES.items()):
        torch.manual_seed(i)
        model = model_cls(cfg_cls(**TINY_T5, **extra)).eval()
        out[name] = (save_hf(model, tmp_path_factory.mktemp(name)), model)
    return out


@pytest.mark.parametrize("name", list(T5_CASES))
def test_t5_family_parity(name, t5_folders, batch):
    folder, ref_model = t5_folders[name]
    ids, mask = batch
    encoder = ref_model.get_encoder() if hasattr(ref_model, "get_encoder") else ref_model
    ref = torch_run(encoder, ids, mask).last_hidden_state.numpy()
    module, params = load_text_encoder(folder)
    out = module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    # the encoder is bidirectional: padded query rows still attend to real tokens, so all rows are defined
    assert_close(out, ref, f"{name} last_hidden_state")
    if name == "umt5":
        assert all("relative_attention_bias" in params["encoder"][f"block.{i}"]["layer.0"]["SelfAttention"]
                   for i in range(TINY_T5["num_layers"]))


def test_t5_sharded_checkpoint_and_round_trip(t5_folders, batch, tmp_path):
    folder, ref_model = t5_folders["t5_v1.1_gated_gelu"]
    sharded = save_hf(ref_model, tmp_path / "sharded", max_shard_size="20KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    module, params = load_text_encoder(sharded)
    _, direct = load_text_encoder(folder)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, direct)

    save_text_encoder(module, params, tmp_path / "export")
    _, again = load_text_encoder(tmp_path / "export")
    assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), again, params)
    # and transformers reads the export back
    ids, mask = batch
    hf = T.T5EncoderModel.from_pretrained(tmp_path / "export").eval()
    assert_close(module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)),
                 torch_run(hf, ids, mask).last_hidden_state.numpy(), "T5 export reloaded by transformers")


def test_t5_float16_matches_float32_and_hf(t5_folders, batch):
    folder, ref_model = t5_folders["t5_v1.1_gated_gelu"]
    ids, mask = batch
    module32, params = load_text_encoder(folder)
    module16, params16 = load_text_encoder(folder, dtype=jnp.float16)
    out32 = np.asarray(module32.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))
    out16 = module16.apply({"params": params16}, jnp.asarray(ids), jnp.asarray(mask))
    assert out16.dtype == jnp.float16
    out16 = np.asarray(out16, np.float32)
    assert np.isfinite(out16).all()
    rel = np.abs(out16 - out32).max() / np.abs(out32).max()
    print(f"T5 float16 vs float32: relative max error {rel:.3e}")
    assert rel < 1e-2
    # Hugging Face in float16 keeps `wo` in float32, as our default keep_wo_float32=True does
    hf16 = T.T5EncoderModel.from_pretrained(folder, dtype=torch.float16).eval()
    assert hf16.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    ref16 = torch_run(hf16, ids, mask).last_hidden_state.float().numpy()
    rel_hf = np.abs(out16 - ref16).max() / np.abs(ref16).max()
    print(f"T5 float16 ours vs transformers float16: relative max error {rel_hf:.3e}")
    assert rel_hf < 5e-3


def test_t5_float16_clamp_keeps_outputs_finite(t5_folders, batch):
    """Overflowing float16 residuals are clamped (Hugging Face's guard) instead of turning into inf."""
    from t2ijax.models.text.t5 import _clamp_float16

    h = jnp.asarray([[7e4, -7e4, 1.0]], jnp.float32).astype(jnp.float16)  # inf, -inf in float16
    clamped = np.asarray(_clamp_float16(h), np.float32)
    fmax = float(jnp.finfo(jnp.float16).max)
    assert np.isfinite(clamped).all()
    np.testing.assert_allclose(clamped[0, :2], [fmax - 1000, -(fmax - 1000)], rtol=1e-3)
    assert _clamp_float16(jnp.ones(3, jnp.float32)).dtype == jnp.float32

    folder, _ = t5_folders["t5_v1.0_relu"]
    ids, mask = batch
    module, params = load_text_encoder(folder, dtype=jnp.float16)
    module = module.clone(keep_wo_float32=False)  # a pure float16 residual stream
    params = jax.tree_util.tree_map_with_path(  # block 0's attention output overflows float16
        lambda p, x: x * 6e4 if "'block.0'" in jax.tree_util.keystr(p) and "'o'" in jax.tree_util.keystr(p) else x,
        params)
    hidden = module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True)
    block0 = np.asarray(hidden[1], np.float32)
    assert hidden[1].dtype == jnp.float16
    assert np.isfinite(block0).all() and np.abs(block0).max() >= 6e4  # saturated, not inf
    assert all(np.isfinite(np.asarray(h, np.float32)).all() for h in hidden)


TINY_CLIP_TEXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                      num_attention_heads=4, max_position_embeddings=16, eos_token_id=VOCAB - 1,
                      bos_token_id=VOCAB - 2, pad_token_id=0)
TINY_CLIP_VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                        image_size=16, patch_size=4)


def clip_batch(batch, eos):
    ids, mask = batch
    ids = ids.copy()
    lengths = mask.sum(1)
    ids[np.arange(len(ids)), lengths - 1] = eos  # every prompt ends with EOT, then padding
    return ids, mask


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    torch.manual_seed(10)
    cfg = T.CLIPConfig(text_config=TINY_CLIP_TEXT, vision_config=dict(TINY_CLIP_VISION, hidden_act="gelu"),
                       projection_dim=24)
    model = T.CLIPModel(cfg).eval()
    return save_hf(model, tmp_path_factory.mktemp("clip")), model


def test_clip_model_text_and_image_features(clip_folder, batch, tmp_path):
    folder, ref = clip_folder
    ids, mask = clip_batch(batch, VOCAB - 1)
    pixels = np.random.RandomState(3).randn(2, 3, 16, 16).astype(np.float32)
    with torch.no_grad():
        ref_text = ref.get_text_features(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
        ref_image = ref.get_image_features(pixel_values=torch.tensor(pixels))
        ref_last = ref.text_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    ref_text = getattr(ref_text, "pooler_output", ref_text).numpy()
    ref_image = getattr(ref_image, "pooler_output", ref_image).numpy()

    module, params = load_clip(folder)
    v = {"params": params}
    text = module.apply(v, jnp.asarray(ids), jnp.asarray(mask), method="get_text_features")
    image = module.apply(v, jnp.asarray(pixels.transpose(0, 2, 3, 1)), method="get_image_features")
    assert_close(text, ref_text, "CLIPModel text features")
    assert_close(image, ref_image, "CLIPModel image features")

    # the text tower of the same folder through load_text_encoder
    tmodule, tparams = load_text_encoder(folder)
    last, pooled = tmodule.apply({"params": tparams}, jnp.asarray(ids), jnp.asarray(mask), method="encode")
    assert_close(last, ref_last.numpy(), "CLIPModel text tower last_hidden_state", valid=mask.astype(bool))
    assert_close(pooled, ref_text, "CLIPModel text tower projected pooled")

    with pytest.raises(ValueError, match="NHWC"):
        module.apply(v, jnp.asarray(pixels), method="get_image_features")  # NCHW by mistake

    save_text_encoder(module, params, tmp_path / "clip_export")
    _, again = load_clip(tmp_path / "clip_export")
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), again, params)
    assert np.asarray(again["logit_scale"]).shape == ()


@pytest.mark.parametrize("variant", ["text_model", "with_projection", "legacy_eos_2"])
def test_clip_text_model_parity(variant, batch, tmp_path):
    torch.manual_seed(20)
    eos = 2 if variant == "legacy_eos_2" else VOCAB - 1
    cfg = T.CLIPTextConfig(**dict(TINY_CLIP_TEXT, eos_token_id=eos, hidden_act="gelu" if variant == "text_model"
                                  else "quick_gelu"), projection_dim=12)
    cls = T.CLIPTextModelWithProjection if variant == "with_projection" else T.CLIPTextModel
    ref_model = cls(cfg).eval()
    folder = save_hf(ref_model, tmp_path / variant)
    ids, mask = clip_batch(batch, VOCAB - 1)  # legacy rule: argmax(ids) finds the EOT (largest id) as well
    ref = torch_run(ref_model, ids, mask, output_hidden_states=True)
    module, params = load_text_encoder(folder)
    v = {"params": params}
    valid = mask.astype(bool)
    last, pooled = module.apply(v, jnp.asarray(ids), jnp.asarray(mask), method="encode")
    assert_close(last, ref.last_hidden_state.numpy(), f"CLIP text ({variant}) last_hidden_state", valid=valid)
    ref_pooled = ref.text_embeds if variant == "with_projection" else ref.pooler_output
    assert_close(pooled, ref_pooled.numpy(), f"CLIP text ({variant}) pooled")
    hidden = module.apply(v, jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True)
    assert len(hidden) == len(ref.hidden_states) == TINY_CLIP_TEXT["num_hidden_layers"] + 1
    assert_close(hidden[-2], ref.hidden_states[-2].numpy(), f"CLIP text ({variant}) penultimate layer", valid=valid)

    save_text_encoder(module, params, tmp_path / "export")
    # the export uses the released checkpoints' `text_model.` prefix; older ones also hold position_ids
    sd = read_weights(tmp_path / "export", "model")
    assert all(k.startswith(("text_model.", "text_projection.")) for k in sd)
    sd["text_model.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    write_weights(sd, tmp_path / "legacy", "model")
    os.link(tmp_path / "export" / "config.json", tmp_path / "legacy" / "config.json")
    _, again = load_text_encoder(tmp_path / "legacy")
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), again, params)
    reloaded = cls.from_pretrained(tmp_path / "export").eval()
    assert_close(last, torch_run(reloaded, ids, mask).last_hidden_state.numpy(),
                 f"CLIP text ({variant}) export reloaded by transformers", valid=valid)


TINY_LLAMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=56, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)


@pytest.mark.parametrize("variant", ["llama_model", "causal_lm_checkpoint", "tied_embeddings", "linear_rope"])
def test_llama_parity_all_hidden_states(variant, batch, tmp_path):
    torch.manual_seed(30)
    extra = {}
    if variant == "tied_embeddings":
        extra["tie_word_embeddings"] = True
    if variant == "linear_rope":
        extra["rope_parameters"] = {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}
    cfg = T.LlamaConfig(**TINY_LLAMA, **extra)
    if variant in ("causal_lm_checkpoint", "tied_embeddings"):
        full = T.LlamaForCausalLM(cfg).eval()
        ref_model = full.model
        folder = save_hf(full, tmp_path / variant)
    else:
        ref_model = T.LlamaModel(cfg).eval()
        folder = save_hf(ref_model, tmp_path / variant)
    ids, mask = batch
    ref = torch_run(ref_model, ids, mask, output_hidden_states=True)
    module, params = load_text_encoder(folder)
    hidden = module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True)
    assert len(hidden) == len(ref.hidden_states) == TINY_LLAMA["num_hidden_layers"] + 1
    valid = mask.astype(bool)
    for layer in (0, 2, len(hidden) - 1):
        assert_close(hidden[layer], ref.hidden_states[layer].numpy(), f"Llama ({variant}) hidden_states[{layer}]",
                     valid=valid)
    last = module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    assert_close(last, ref.last_hidden_state.numpy(), f"Llama ({variant}) last_hidden_state", valid=valid)
    # SUR-adapter's use: an intermediate layer, mean-pooled over the prompt tokens
    m = mask[..., None].astype(np.float32)
    pooled = (np.asarray(hidden[2]) * m).sum(1) / m.sum(1)
    ref_pooled = (ref.hidden_states[2].numpy() * m).sum(1) / m.sum(1)
    assert_close(pooled, ref_pooled, f"Llama ({variant}) mean-pooled layer 2")

    if variant == "llama_model":
        captured = {}
        hook = ref_model.layers[-1].register_forward_hook(lambda mod, inp, out: captured.update(raw=out))
        torch_run(ref_model, ids, mask)
        hook.remove()
        raw = captured["raw"][0] if isinstance(captured["raw"], tuple) else captured["raw"]
        pre_norm = module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True,
                                last_layer_pre_norm=True)
        assert_close(pre_norm[-1], raw.numpy(), "Llama last layer before the final norm", valid=valid)
        assert_close(pre_norm[2], ref.hidden_states[2].numpy(), "Llama pre-norm tuple, layer 2", valid=valid)

        save_text_encoder(module, params, tmp_path / "export")
        _, again = load_text_encoder(tmp_path / "export")
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                               again, params)
        reloaded = T.LlamaModel.from_pretrained(tmp_path / "export").eval()
        assert_close(last, torch_run(reloaded, ids, mask).last_hidden_state.numpy(),
                     "Llama export reloaded by transformers", valid=valid)


def test_llama_unsupported_rope_scaling_is_named(tmp_path):
    cfg = dict(TINY_LLAMA, model_type="llama", rope_theta=10000.0,
               rope_scaling={"rope_type": "yarn", "factor": 4.0})
    os.makedirs(tmp_path / "yarn")
    with open(tmp_path / "yarn" / "config.json", "w") as f:
        json.dump(cfg, f)
    write_weights({"norm.weight": np.ones(32, np.float32)}, tmp_path / "yarn", "model")
    with pytest.raises(ValueError, match="unsupported rope scaling type 'yarn'"):
        load_text_encoder(tmp_path / "yarn")


def test_strict_loading_names_the_key(t5_folders, tmp_path):
    folder, _ = t5_folders["t5_v1.0_relu"]
    sd = read_weights(folder, "model")
    del sd["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    sd["encoder.block.0.layer.0.SelfAttention.q.weight"] = sd["encoder.block.0.layer.0.SelfAttention.q.weight"][:, :5]
    write_weights(sd, tmp_path, "model")
    with open(os.path.join(folder, "config.json")) as src, open(tmp_path / "config.json", "w") as dst:
        dst.write(src.read())
    with pytest.raises(WeightLoadError) as err:
        load_text_encoder(tmp_path)
    assert "encoder.block.1.layer.1.DenseReluDense.wo.weight" in str(err.value)
    assert "encoder.block.0.layer.0.SelfAttention.q.weight" in str(err.value)


def test_unknown_model_type_is_rejected(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"model_type": "bert"}, f)
    write_weights({"x": np.zeros(1, np.float32)}, tmp_path, "model")
    with pytest.raises(ValueError, match="model_type 'bert'"):
        load_text_encoder(tmp_path)


@pytest.mark.parametrize("loader", [load_text_encoder, load_clip, load_tokenizer])
def test_hub_id_fails_at_once_with_help(loader):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="download it elsewhere") as err:
        loader("google/flan-t5-xl")
    assert "local folder" in str(err.value)
    assert time.perf_counter() - start < 1.0


def make_word_tokenizer(folder, words):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({w: i + 3 for i, w in enumerate(words)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return str(folder)


PROMPT_WORDS = "a red cube on top of blue sphere cat dog sitting under the table photo".split()
PROMPTS = ["a red cube on top of a blue sphere", "a cat", "a photo of a dog sitting under the table", "zebra"]


def test_tokenizer_end_to_end_with_t5(t5_folders, tmp_path):
    folder, ref_model = t5_folders["t5_v1.1_gated_gelu"]
    tok_dir = make_word_tokenizer(tmp_path / "tok", PROMPT_WORDS)
    tokenizer = load_tokenizer(tok_dir, max_length=12)
    assert tokenizer.model_max_length == 12
    enc = tokenizer(PROMPTS, padding="max_length", truncation=True, return_tensors="np")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == (4, 12) and (ids[3, :2] == [2, 1]).all()  # unknown word, then </s>
    hf_enc = T.AutoTokenizer.from_pretrained(tok_dir)(PROMPTS, padding="max_length", max_length=12,
                                                      truncation=True, return_tensors="pt")
    np.testing.assert_array_equal(ids, hf_enc["input_ids"].numpy())
    with torch.no_grad():
        ref = ref_model(**hf_enc).last_hidden_state.numpy()
    module, params = load_text_encoder(folder)
    out = module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    assert_close(out, ref, "tokenizer -> T5 end to end")


def test_logical_axes_on_every_parameter(t5_folders, clip_folder):
    module, _ = load_text_encoder(t5_folders["umt5"][0])
    _, specs = abstract_init(module, jax.ShapeDtypeStruct((1, 4), jnp.int32))
    flat = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert flat and all(isinstance(s, jax.sharding.PartitionSpec) for _, s in flat)
    names = {a for _, s in flat for a in s if a is not None}
    assert {"embed", "mlp", "heads", "vocab", "relpos", "norm"} <= names
    assert specs["encoder"]["block.2"]["layer.0"]["SelfAttention"]["relative_attention_bias"]["embedding"] == \
        jax.sharding.PartitionSpec("relpos", "heads")


def test_sharded_placement_on_8_devices(t5_folders, batch):
    """Params go straight onto their shardings (8 fake CPU devices, in a subprocess)."""
    folder, ref_model = t5_folders["t5_v1.1_gated_gelu"]
    ids, mask = batch
    ref = torch_run(ref_model, ids, mask).last_hidden_state.numpy()
    script = textwrap.dedent(f"""
        import json
        import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from t2ijax.models.layers import abstract_init
        from t2ijax.weights import load_text_encoder
        assert jax.device_count() == 8
        mesh = Mesh(np.array(jax.devices()).reshape(8), ("model",))
        module, _ = load_text_encoder({folder!r})
        _, specs = abstract_init(module, jax.ShapeDtypeStruct((1, 4), jnp.int32))
        rules = (("mlp", "model"),)  # d_ff 48 splits 8 ways; 4 heads would not
        shardings = jax.tree_util.tree_map(lambda s: NamedSharding(mesh, nn.logical_to_mesh_axes(s, rules)), specs,
                                           is_leaf=lambda x: isinstance(x, P))
        module, params = load_text_encoder({folder!r}, shardings=shardings)
        wi = params["encoder"]["block.0"]["layer.1"]["DenseReluDense"]["wi_0"]["kernel"]
        assert wi.sharding.spec == P(None, "model"), wi.sharding
        assert wi.addressable_shards[0].data.shape == (32, 6), wi.addressable_shards[0].data.shape
        out = jax.jit(module.apply)({{"params": params}}, jnp.asarray(np.array({ids.tolist()})),
                                   jnp.asarray(np.array({mask.tolist()})))
        print("OUTPUT", json.dumps(np.asarray(out).tolist()))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("OUTPUT ")][-1]
    out = np.array(json.loads(line[len("OUTPUT "):]), np.float32)
    assert_close(out, ref, "T5 on 8 devices, sharded params")
