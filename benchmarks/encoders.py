"""Text-encoder throughput: t2ijax (JAX, jit) vs transformers (PyTorch) in the same run.

A T5 v1.1 encoder and a Llama decoder of about the same size (~81M parameters each, random
weights) are saved with `save_pretrained`, loaded through `t2ijax.weights.load_text_encoder`,
and run forward (inference) on a (batch x length) batch of token ids, every other prompt padded
from 3/4 of the length; the outputs are compared (max relative error over the unpadded tokens).

  python benchmarks/encoders.py [--batch 8] [--length 128] [--dtype float32] [--repeats 5] [--warmup 1]
                                [--wait 120] [--json F]

Timing goes through benchmarks/harness.py: a machine check first (waits up to --wait seconds for an
idle machine, re-checks between rounds, marks rows LOADED), then for each model JAX and PyTorch calls
alternately, one timed call each per round, medians of --repeats rounds after --warmup untimed rounds.
JAX's first call (compilation) is timed separately before that (reported in info). Prints tokens/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import harness  # noqa: E402

from t2ijax.weights import load_text_encoder  # noqa: E402

SCRIPT = "python benchmarks/encoders.py"



def model_zoo():
    import transformers as T

    t5 = T.T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=8, num_heads=12,
                    feed_forward_proj="gated-gelu", dropout_rate=0.0)
    llama = T.LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=9,
                          num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=512)
    return {"T5 v1.1 encoder": (T.T5EncoderModel, t5), "Llama decoder (GQA 12/4)": (T.LlamaModel, llama)}


def main():
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    harness.add_arguments(parser, repeats=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    tokens = args.batch * args.length
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 32000, size=(args.batch, args.length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1::2, args.length * 3 // 4:] = 0  # half of the prompts padded
    valid = mask.astype(bool)
    n_padded = int((~valid).any(axis=1).sum())
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); batch {args.batch} x {args.length} tokens; {args.dtype}")

    # set-up, compilation and parity of every model first; timing afterwards
    models = []
    info = {"jax_platform": jax.devices()[0].platform, "torch_threads": torch.get_num_threads(), "models": {}}
    for name, (cls, cfg) in model_zoo().items():
        ref = cls(cfg).eval()
        n_params = sum(p.numel() for p in ref.parameters())
        with tempfile.TemporaryDirectory() as folder:
            ref.save_pretrained(folder, safe_serialization=True)
            module, params = load_text_encoder(folder, dtype=jnp.dtype(args.dtype))
        ref = ref.to(getattr(torch, args.dtype)) if args.dtype != "float32" else ref
        t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)

        apply = jax.jit(lambda p, i, m, module=module: module.apply({"params": p}, i, m))
        j_ids, j_mask = jnp.asarray(ids), jnp.asarray(mask)
        start = time.perf_counter()
        ours = np.asarray(apply(params, j_ids, j_mask).block_until_ready(), np.float32)
        compile_s = time.perf_counter() - start
        with torch.inference_mode():
            theirs = ref(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.float().numpy()
        rel = float(np.abs(ours[valid] - theirs[valid]).max() / np.abs(theirs[valid]).max())
        print(f"{name}: {n_params / 1e6:.1f}M params; max rel diff {rel:.1e}; JAX first call {compile_s:.1f}s")
        info["models"][name] = {"params": int(n_params), "max_rel_err": rel, "jax_compile_s": round(compile_s, 2)}

        def run_jax(apply=apply, params=params, j_ids=j_ids, j_mask=j_mask):
            jax.block_until_ready(apply(params, j_ids, j_mask))

        def run_torch(ref=ref, t_ids=t_ids, t_mask=t_mask):
            with torch.inference_mode():
                ref(input_ids=t_ids, attention_mask=t_mask)

        models.append((name, n_params, run_jax, run_torch))

    check = harness.MachineCheck(wait_s=args.wait)
    report = harness.Report("encoders", args, harness.command_line(SCRIPT, parser, args), check)
    report.info.update(info)
    for name, n_params, run_jax, run_torch in models:
        times = harness.alternate({"jax": run_jax, "torch": run_torch}, args.repeats, args.warmup, check)
        report.time_row(f"{name} ({n_params / 1e6:.1f}M params, random weights) forward, batch {args.batch} x "
                        f"{args.length} tokens ({n_padded} of {args.batch} prompts padded from token "
                        f"{args.length * 3 // 4}), {args.dtype}; t2ijax (jit) vs transformers (eager, inference_mode)",
                        times["jax"], times["torch"], per=tokens, per_unit="tok/s", target=None)
    report.finish()


if __name__ == "__main__":
    main()
