"""Language models of the Shapes captions (`t2ijax/methods/language_model.py`), trained by the one loop.

Every batch carries the three caption kinds of its scenes (train split only), each tokenized by "shapes_word"
at its own length: dense (main caption, 80 tokens), short (20) and narrative (100); the loss is the token-
weighted mean over the three.

Variants (the string after ``:``):
  llama       Llama-style decoder, next-token prediction: 4 layers, width 128, 4 heads, SwiGLU 352 (~0.8M
              params); batch 32 scenes (x 3 captions), 200 steps, AdamW 3e-3, 20 warmup steps + cosine
              (about 4 minutes on a busy 2-core CPU: ~1.1-1.5 s a step).
  t5          T5-style encoder-decoder (v1.1: gated-GELU, untied LM head), span corruption (15% noise, mean
              span 3, 16 sentinels on top of the 90 words): 4 + 4 layers, width 128, 4 heads of 32, d_ff 256
              (~1.6M params); the same batch, steps and optimiser (about 5 minutes).
  tiny_llama  / tiny_t5: one layer (one + one) of width 32, batch 8, 10 steps: tests and smoke runs; the three
              kinds go through one forward, padded to 100 tokens (model.pack_captions: one graph to compile).

Data: the Shapes split sizes of configs/clip_shapes.py (20,000 / 1,000 / 1,000 scenes, resolution 32: the same
prepared dataset); the held-out colour/shape pairs occur in test scenes only.

Launch (experiments/shapes_lms/run.sh runs all of it):
  t2ijax train --config=configs/lm_shapes.py:llama --workdir=runs/shapes_lms/llama
  t2ijax convert --workdir=runs/shapes_lms/llama --out=runs/shapes_lms/llama/export   # -> export/llama
  t2ijax train --config=configs/lm_shapes.py:t5 --workdir=runs/shapes_lms/t5
  t2ijax convert --workdir=runs/shapes_lms/t5 --out=runs/shapes_lms/t5/export         # -> export/t5
  python experiments/shapes_lms/probe.py --workdir=runs/shapes_lms/llama --workdir=runs/shapes_lms/t5
Overrides: --config.total_steps=2000 --config.optim.lr=1e-3 --config.model.captions='("narrative",)'
"""

import ml_collections

from t2ijax.config_utils import import_sibling, parse_arg

common = import_sibling(__file__, "common")

VARIANTS = ("llama", "t5", "tiny_llama", "tiny_t5")
CAPTION_LENGTHS = {"dense": 80, "short": 20, "narrative": 100}  # shapes_word tokens, [BOS] and [EOS] included


def get_config(arg=None):
    arg = parse_arg(arg, variant="llama")
    if arg.variant not in VARIANTS:
        raise ValueError(f"lm_shapes variant {arg.variant!r}; choose one of {VARIANTS}")
    tiny = arg.variant.startswith("tiny")
    arch = arg.variant.removeprefix("tiny_")
    steps = 10 if tiny else 200
    c = common.runtime_defaults(
        method="language_model",
        total_steps=steps,
        batch_size=8 if tiny else 32,
        compute_dtype="float32",  # CPU: bfloat16 is slower there
        ema_decay=0.0,            # short runs: the raw params at the end of the cosine schedule
        log_every=5 if tiny else 20,
        checkpoint_every=10 if tiny else 100,
    )
    c.optim = common.optim_defaults(lr=1e-3 if tiny else 3e-3, weight_decay=0.01, b2=0.98, eps=1e-8,
                                    schedule="warmup_cosine", warmup_steps=2 if tiny else 20, grad_clip_norm=1.0)

    from t2ijax.data.config import default_data_config
    c.data = default_data_config(
        resolution=32, caption="dense", max_length=CAPTION_LENGTHS["dense"],
        num_train=64 if tiny else 20000, num_val=16 if tiny else 1000, num_test=16 if tiny else 1000,
        with_regions=False, random_flip=False, read_threads=2, prefetch_buffer_size=256,
        extra_captions={"short": f"short:shapes_word:{CAPTION_LENGTHS['short']}",
                        "narrative": f"narrative:shapes_word:{CAPTION_LENGTHS['narrative']}"})

    c.model = ml_collections.ConfigDict()
    c.model.objective = "causal" if arch == "llama" else "span"
    c.model.captions = ("dense", "short", "narrative")
    c.model.pack_captions = tiny  # tiny: one padded forward over the three kinds (one graph to compile)
    width = 32 if tiny else 128
    layers = 1 if tiny else 4
    heads = 2 if tiny else 4
    if arch == "llama":
        c.model.llama = dict(vocab_size=0, max_position_embeddings=0, hidden_size=width,
                             intermediate_size=88 if tiny else 352, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=heads, rms_norm_eps=1e-6,
                             rope_theta=10000.0, hidden_act="silu")
    else:
        c.model.t5 = dict(vocab_size=0, d_model=width, d_kv=width // heads, d_ff=2 * width, num_layers=layers,
                          num_decoder_layers=layers, num_heads=heads, relative_attention_num_buckets=32,
                          relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                          feed_forward_proj="gated-gelu", model_type="t5")
        c.model.noise_density = 0.15
        c.model.mean_span_length = 3.0
        c.model.num_sentinels = 16
    return c
