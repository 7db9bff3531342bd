"""Text-encoder throughput: t2ijax (JAX, jit) vs transformers (PyTorch) in the same run.

A T5 v1.1 encoder and a Llama decoder of about the same size (~81M parameters each, random
weights) are saved with `save_pretrained`, loaded through `t2ijax.weights.load_text_encoder`,
and timed on a (batch x length) batch of token ids; the outputs are compared too.

  .venv/bin/python benchmarks/encoders.py [--batch 8] [--length 128] [--iters 5] [--dtype float32]

Prints tokens/s (median over --iters timed calls after one warm-up / compilation call).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t2ijax.weights import load_text_encoder  # noqa: E402


def model_zoo():
    import transformers as T

    t5 = T.T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=8, num_heads=12,
                    feed_forward_proj="gated-gelu", dropout_rate=0.0)
    llama = T.LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=9,
                          num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=512)
    return {"T5 v1.1 encoder": (T.T5EncoderModel, t5), "Llama decoder (GQA 12/4)": (T.LlamaModel, llama)}


def median_time(fn, iters):
    fn()  # warm-up (compilation for JAX)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    tokens = args.batch * args.length
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 32000, size=(args.batch, args.length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1::2, args.length * 3 // 4:] = 0  # half of the prompts padded
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); batch {args.batch} x {args.length} tokens; {args.dtype}")
    rows = []
    for name, (cls, cfg) in model_zoo().items():
        ref = cls(cfg).eval()
        n_params = sum(p.numel() for p in ref.parameters())
        with tempfile.TemporaryDirectory() as folder:
            ref.save_pretrained(folder, safe_serialization=True)
            module, params = load_text_encoder(folder, dtype=jnp.dtype(args.dtype))
        tdtype = getattr(torch, args.dtype)
        ref = ref.to(tdtype) if args.dtype != "float32" else ref
        t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)

        apply = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m))
        j_ids, j_mask = jnp.asarray(ids), jnp.asarray(mask)
        start = time.perf_counter()
        ours = np.asarray(apply(params, j_ids, j_mask).block_until_ready(), np.float32)
        compile_s = time.perf_counter() - start
        jax_s = median_time(lambda: apply(params, j_ids, j_mask).block_until_ready(), args.iters)
        with torch.inference_mode():
            theirs = ref(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.float().numpy()
            torch_s = median_time(lambda: ref(input_ids=t_ids, attention_mask=t_mask), args.iters)
        valid = mask.astype(bool)
        rel = np.abs(ours[valid] - theirs[valid]).max() / np.abs(theirs[valid]).max()
        rows.append((name, n_params / 1e6, tokens / jax_s, tokens / torch_s, jax_s / torch_s, compile_s, rel))

    header = ("model", "params (M)", "t2ijax tok/s", "torch tok/s", "time ratio jax/torch", "first call s",
              "max rel diff")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:,.0f} | {r[3]:,.0f} | {r[4]:.2f} | {r[5]:.1f} | {r[6]:.1e} |")


if __name__ == "__main__":
    main()
