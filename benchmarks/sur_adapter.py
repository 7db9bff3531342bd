"""SUR-adapter training step at the released size: t2ijax (JAX, jit) vs the released module in PyTorch, same run
(issue 16).

One step, as `SUR_adapter_train.py` runs it for the adapter (run.sh settings), on both sides:
  - the adapter forward on frozen CLIP last hidden states x (B, 77, 768): released config width 768, 8 heads,
    FF 2048, depth 2, eta 0.1, in training mode (dropout p 0.1 active in the encoder, as `adapter.train()`);
  - the LLM target: the frozen LLMResize projection (Linear 5120 -> 768, LLaMA-13B width) of a fixed 5120-d
    vector per sample, (B, 1, 5120) -> (B, 1, 768), computed inside the step as the release does;
  - the two KD losses in release form (`sur_distillation_losses(..., reproduce_release=True)`: the adapter's
    tensors are the non-detached KL targets, Q6), total 1e-5 * llm + 1e-5 * prompt against the CLIP states of
    a "complex prompt" (B, 77, 768);
  - backward, gradient clipping at global norm 1.0, AdamW (lr 1e-5, betas 0.9 / 0.999, eps 1e-8, weight decay
    1e-2).
The denoising MSE is left out on purpose: in the release the adapter output is re-wrapped with `torch.tensor(...)`
(a detached copy) before the frozen U-Net (Q3), so that term sends no gradient to the adapter and its cost is the
frozen U-Net's forward, which `unet_step` measures. Gradient accumulation (4 in run.sh) is not modelled: every
step updates. float32 on both sides (the release trains under fp16 autocast on a GPU).

Encoder: as released by default (`nn.TransformerEncoder` without batch_first, so the encoder attends across the
BATCH at each token position, Q1; at batch 1 every token attends only to itself); `--paper-intent` runs both sides
with attention across the 77 tokens of each sample instead (t2ijax's default; torch transposes around the
encoder). The dead parameters (template `encoder_layer`, `attention.value_layer`, Q5) get no gradient in PyTorch,
so its AdamW skips them; t2ijax loads the adapter with `dead_params=False` (13,980,928 trainable parameters on
both sides; PyTorch's state dict holds 20,085,504).

Same weights: the PyTorch rendering of the release (tests/torch_sur_adapter.py, seeded; `fc.weight` drawn like
a default nn.Linear instead of the release's zeros, so that the prompt term's gradient reaches the attention block
and the encoder at the first step: through a zero fc.weight only fc itself gets it) is saved with safetensors and
loaded through `t2ijax.weights.load_sur_adapter`; LLMResize's weights are converted in memory. Before timing, for
every batch size, one step with dropout off (torch `eval()`, JAX `deterministic=True`) from identical weights is
compared: loss, gradient norm and every updated parameter (asserted: loss rtol 1e-4, gradient norm rtol 1e-3,
every parameter within 5% of the learning rate, i.e. of a typical Adam update; measured: 1.2e-7, one float32
ulp at 1.0). Timing then continues from those states with dropout on.

  python benchmarks/sur_adapter.py [--batches 1,8] [--paper-intent] [--torch-compile] [--repeats 10] [--warmup 2]
                                   [--wait 120] [--json F]

JAX: one jitted step (params, AdamW state and dropout key donated). PyTorch: eager, all cores;
`--torch-compile` adds `torch.compile(adapter)` (inductor, default mode) as a third side, reported in extra rows.
Timing goes through benchmarks/harness.py: a machine check first (waits up to --wait seconds for an idle machine,
re-checks between rounds, marks rows LOADED), then the sides alternately, one timed step each per round, medians
of --repeats rounds after --warmup untimed rounds. JAX's compilation is timed separately (reported in info).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

import harness  # noqa: E402

from t2ijax.methods.sur_losses import RELEASE_LOSS_WEIGHTS, apply_llm_projection, sur_distillation_losses  # noqa: E402
from t2ijax.weights import load_sur_adapter  # noqa: E402
from t2ijax.weights.sur_adapter import DEAD_KEY_PREFIXES, sur_adapter_state_dict  # noqa: E402

SCRIPT = "python benchmarks/sur_adapter.py"
WIDTH, HEADS, FF, DEPTH, ETA, DROPOUT = 768, 8, 2048, 2, 0.1, 0.1
TOKENS, LLM_SIZE = 77, 5120  # CLIP context; LLaMA-13B hidden size (run.sh: --llm 13B)
LR, BETAS, EPS, WEIGHT_DECAY, MAX_GRAD_NORM = 1e-5, (0.9, 0.999), 1e-8, 1e-2, 1.0  # run.sh / argparse defaults
W_LLM, W_PROMPT = RELEASE_LOSS_WEIGHTS["llm"], RELEASE_LOSS_WEIGHTS["prompt"]
# an Adam update moves a parameter by about lr; one float32 ulp at 1.0 (LayerNorm weights) is 1.2% of lr = 1e-5
PARITY = dict(loss_rtol=1e-4, grad_norm_rtol=1e-3, param_atol=0.05 * LR)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (1: the release's per-device)")
    parser.add_argument("--paper-intent", action="store_true",
                        help="encoder attends across the tokens of each sample (Q1 fixed) on both sides")
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile(adapter)")
    harness.add_arguments(parser, repeats=10)
    parser.set_defaults(warmup=2)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    import torch
    from safetensors.torch import save_file

    warnings.filterwarnings("ignore", message="enable_nested_tensor is True")  # the release's batch_first=False
    from torch_sur_adapter import LLMResize, RefAdapter, ref_distillation_loss

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    ref0 = RefAdapter(depth=DEPTH, adapter_weight=ETA, sd_text_size=WIDTH, nhead=HEADS, dim_feedforward=FF)
    resize = LLMResize(llm_size=LLM_SIZE, sd_text_size=WIDTH).requires_grad_(False)
    with torch.no_grad():  # nn.Linear's default init for fc.weight instead of the release's zeros (see docstring)
        bound = WIDTH ** -0.5
        ref0.fc.weight.copy_(torch.empty_like(ref0.fc.weight).uniform_(-bound, bound,
                                                                        generator=torch.Generator().manual_seed(1)))
    init_sd = {k: v.detach().clone().contiguous() for k, v in ref0.state_dict().items()}
    n_state = sum(v.numel() for v in init_sd.values())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "adapter.safetensors")
        save_file(init_sd, path)
        module, params0 = load_sur_adapter(path, reproduce_release=True, eta=ETA, heads=HEADS, dead_params=False,
                                           dropout_at_inference=False, attend_across_batch=not args.paper_intent)
    assert (module.width, module.depth, module.ff_dim, module.dropout_rate) == (WIDTH, DEPTH, FF, DROPOUT)
    n_ours = sum(x.size for x in jax.tree.leaves(params0))
    proj = {"kernel": jnp.asarray(resize.fc.weight.numpy().T), "bias": jnp.asarray(resize.fc.bias.numpy())}

    tx = optax.chain(optax.clip_by_global_norm(MAX_GRAD_NORM),
                     optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY))

    def loss_fn(p, batch, key, deterministic):
        x, complex_prompt, v_llm, projection = batch
        r = module.apply({"params": p}, x, deterministic=deterministic, return_all=True,
                         rngs=None if deterministic else {"dropout": key})
        llm_target = apply_llm_projection(projection, v_llm)  # frozen: no gradient reaches it
        terms = sur_distillation_losses(r.encoder_out, r.out, llm_target, complex_prompt, reproduce_release=True)
        return W_LLM * terms["llm"] + W_PROMPT * terms["prompt"]

    def step(state, batch, deterministic):
        key, sub = jax.random.split(state["key"])
        loss, grads = jax.value_and_grad(loss_fn)(state["p"], batch, sub, deterministic)
        updates, opt = tx.update(grads, state["o"], state["p"])
        return dict(p=optax.apply_updates(state["p"], updates), o=opt, key=key), (loss, optax.global_norm(grads))

    step = jax.jit(step, static_argnums=2, donate_argnums=0)

    def fresh_jax_state():
        p = jax.tree.map(jnp.copy, params0)
        return dict(p=p, o=tx.init(p), key=jax.random.key(0))

    def fresh_torch(compiled=False):
        model = RefAdapter(depth=DEPTH, adapter_weight=ETA, sd_text_size=WIDTH, nhead=HEADS, dim_feedforward=FF)
        model.load_state_dict(copy.deepcopy(init_sd), strict=True)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
        return model, (torch.compile(model) if compiled else model), opt

    def torch_step(model, fwd, opt, tb):
        x, complex_prompt, v_llm = tb
        llm_resize_vec = resize(v_llm)  # frozen (requires_grad False), as released
        out, enc, _ = fwd(x, batch_first_fix=args.paper_intent)
        loss = W_LLM * ref_distillation_loss(llm_resize_vec, enc) + W_PROMPT * ref_distillation_loss(complex_prompt,
                                                                                                     out)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), norm

    live_keys = [k for k in init_sd if not k.startswith(DEAD_KEY_PREFIXES)]
    rng = np.random.default_rng(0)
    sides, info = {}, dict(parity={}, jax_compile_s={}, torch_compile_s={})  # sides: batch -> {side: fn}
    for b in batches:
        data = (rng.standard_normal((b, TOKENS, WIDTH), np.float32),        # CLIP(simple prompt), frozen
                rng.standard_normal((b, TOKENS, WIDTH), np.float32),        # CLIP(complex prompt), frozen
                rng.standard_normal((b, 1, LLM_SIZE), np.float32))          # pooled LLaMA vector, (B, 1, 5120)
        batch = tuple(jnp.asarray(a) for a in data) + (proj,)
        tb = tuple(torch.from_numpy(a) for a in data)

        # parity: one step, dropout off, identical weights
        model, fwd, opt = fresh_torch()
        model.eval()
        t_loss, t_norm = torch_step(model, fwd, opt, tb)
        t_sd = model.state_dict()
        t0 = time.perf_counter()
        state, (j_loss, j_norm) = step(fresh_jax_state(), batch, True)
        j_loss, j_norm = float(j_loss), float(j_norm)
        det_compile_s = time.perf_counter() - t0
        j_sd = sur_adapter_state_dict(module, state["p"])
        param_err = max(float(np.max(np.abs(j_sd[k] - t_sd[k].numpy()))) for k in live_keys)
        moved = max(float(np.max(np.abs(t_sd[k].numpy() - init_sd[k].numpy()))) for k in live_keys)
        par = dict(loss_jax=j_loss, loss_torch=float(t_loss), grad_norm_jax=j_norm, grad_norm_torch=float(t_norm),
                   max_abs_param_err=param_err, max_abs_update=moved, lr=LR)
        info["parity"][f"batch{b}"] = par
        print(f"batch {b} parity (one step, dropout off): loss {j_loss:.6g} vs {float(t_loss):.6g}; grad norm "
              f"{j_norm:.4g} vs {float(t_norm):.4g}; updated params max|jax - torch| {param_err:.2e} "
              f"(largest update {moved:.2e}, lr {LR:g}); deterministic step compile {det_compile_s:.1f}s")
        assert abs(j_loss - float(t_loss)) <= PARITY["loss_rtol"] * abs(float(t_loss)), par
        assert abs(j_norm - float(t_norm)) <= PARITY["grad_norm_rtol"] * float(t_norm), par
        assert param_err <= PARITY["param_atol"], par

        # timing continues from the two (equal) states, dropout on
        model.train()
        t0 = time.perf_counter()
        state, aux = step(state, batch, False)
        jax.block_until_ready(aux)
        info["jax_compile_s"][f"batch{b}"] = round(time.perf_counter() - t0, 2)
        holder = {"s": state}

        def run_jax(batch=batch, holder=holder):
            holder["s"], aux = step(holder["s"], batch, False)
            jax.block_until_ready(aux)

        sides[b] = {"jax": run_jax, "torch": lambda model=model, opt=opt, tb=tb: torch_step(model, model, opt, tb)}
        if args.torch_compile:
            c_model, c_fwd, c_opt = fresh_torch(compiled=True)
            c_model.train()
            t0 = time.perf_counter()
            torch_step(c_model, c_fwd, c_opt, tb)
            info["torch_compile_s"][f"batch{b}"] = round(time.perf_counter() - t0, 2)
            sides[b]["torch_compile"] = lambda m=c_model, f=c_fwd, o=c_opt, tb=tb: torch_step(m, f, o, tb)

    mode = ("paper intent: the encoder attends across the 77 tokens of each sample" if args.paper_intent else
            "encoder as released: attends across the batch (Q1)")
    print(f"SUR-adapter: {n_ours:,} trainable params (t2ijax) / {n_state:,} in the PyTorch state dict; {mode}; "
          f"float32; jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); JAX compile {info['jax_compile_s']}"
          + (f"; torch.compile first step {info['torch_compile_s']}" if args.torch_compile else ""))

    check = harness.MachineCheck(wait_s=args.wait)
    # one alternation per batch size: its sides run round-robin, one timed step each per round
    times = {b: harness.alternate(fns, args.repeats, args.warmup, check) for b, fns in sides.items()}

    report = harness.Report("sur_adapter", args, harness.command_line(SCRIPT, parser, args), check)
    report.info.update(params_t2ijax=int(n_ours), params_torch_state_dict=int(n_state), mode=mode,
                       jax_platform=jax.devices()[0].platform, torch_threads=torch.get_num_threads(), **info)
    for b in batches:
        what = (f"SUR-adapter ({n_ours / 1e6:.2f}M trainable params; 768 wide, 8 heads, FF 2048, depth 2; {mode}) "
                f"training step: fwd with dropout 0.1 + LLMResize 5120->768 + 2 KD losses (release form) + bwd + "
                f"clip 1.0 + AdamW, batch {b} x 77 x 768, float32; t2ijax (jit, donated state) vs the released "
                f"module in PyTorch (eager)")
        report.time_row(what, times[b]["jax"], times[b]["torch"], per=b, per_unit="ex/s")
        if args.torch_compile:
            report.time_row(f"same step, batch {b}: t2ijax vs PyTorch torch.compile(adapter) (inductor)",
                            times[b]["jax"], times[b]["torch_compile"], per=b, per_unit="ex/s")
    report.finish()


if __name__ == "__main__":
    main()
