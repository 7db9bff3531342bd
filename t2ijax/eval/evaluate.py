"""Run a benchmark end to end for a sampler: generate, score, write report and grid.

    evaluate(sampler, benchmark="shapes", out_dir="runs/x/eval", data_config=cfg)
    evaluate(sampler, benchmark="dpg", out_dir=..., dpg_csv="dpg_bench.csv", vqa=my_vqa)

`sampler(prompts: list[str], seeds: list[int]) -> images` returns one image per
prompt (N, H, W, 3), uint8 or float in [-1, 1]; the same prompt appears
`images_per_prompt` times with different seeds. The seeds are recorded in the
report (DPG-Bench does not specify them upstream).

shapes  held-out (test split) Shapes scenes, prompts = the configured caption
        kind. Scores: T2I-CompBench-style category accuracy and a DPG-style
        score over the scene's question graph, both answered by the judge.
dpg     the 1,065 DPG-Bench prompts (or the first `num_prompts`). The 2x2 grids
        are written as `dpg_grids/<id>.png`, the layout the official script
        reads. Scored here only when the official `dpg_bench.csv` and a VQA
        function are given.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from t2ijax.data import shapes
from t2ijax.eval import dpg
from t2ijax.eval.compbench import compbench_scores
from t2ijax.eval.grid import save_grid, to_uint8
from t2ijax.eval.judge import JudgeVQA
from t2ijax.eval.report import write_report

BENCHMARKS = ("shapes", "dpg")


def _generate(sampler: Callable, prompts: list[str], images_per_prompt: int, seed: int, batch_size: int):
    """Call the sampler on full batches only (the last one is padded by repeating its final prompt and the
    padding discarded), so that a jitted sampler compiles once."""
    flat_prompts = [p for p in prompts for _ in range(images_per_prompt)]
    seeds = [seed + i for i in range(len(flat_prompts))]
    images = []
    for i in range(0, len(flat_prompts), batch_size):
        chunk, chunk_seeds = flat_prompts[i:i + batch_size], seeds[i:i + batch_size]
        real = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch_size - real)
        chunk_seeds = chunk_seeds + [chunk_seeds[-1]] * (batch_size - real)
        out = np.asarray(sampler(chunk, chunk_seeds))
        if out.ndim != 4 or out.shape[0] != batch_size or out.shape[-1] != 3:
            raise ValueError(f"sampler must return (N, H, W, 3) images for N prompts; got shape {out.shape} "
                             f"for {batch_size} prompts")
        images.extend(to_uint8(img) for img in out[:real])
    grouped = [images[k * images_per_prompt:(k + 1) * images_per_prompt] for k in range(len(prompts))]
    seed_groups = [seeds[k * images_per_prompt:(k + 1) * images_per_prompt] for k in range(len(prompts))]
    return grouped, seed_groups


def evaluate(sampler: Callable, *, benchmark: str, out_dir: str, data_config=None, num_prompts: int | None = None,
             images_per_prompt: int = 4, seed: int = 0, batch_size: int = 16, grid_images: int = 16,
             dpg_csv: str | None = None, vqa: Callable | None = None, dpg_options: dpg.DPGOptions | None = None,
             prompts_path: str | None = None, split: str = "test") -> dict:
    """Generate with `sampler`, score `benchmark`, write `report.json`, `report.md` and `grid.png` into `out_dir`.

    `split` (shapes only): "test" (the held-out colour/shape pairs; the reported number) or "validation"
    (for tuning sampling settings such as the guidance scale without looking at the test prompts).
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
    if images_per_prompt <= 0:
        raise ValueError(f"images_per_prompt must be positive, got {images_per_prompt}")
    options = dpg_options or dpg.DPGOptions.official()
    os.makedirs(out_dir, exist_ok=True)
    if benchmark == "shapes":
        results, prompts, grouped = _evaluate_shapes(sampler, data_config, num_prompts, images_per_prompt, seed,
                                                     batch_size, options, split)
    else:
        results, prompts, grouped = _evaluate_dpg(sampler, out_dir, num_prompts, seed, batch_size, dpg_csv, vqa,
                                                  options, prompts_path)
    n = min(grid_images, len(prompts))
    results["grid"] = save_grid([g[0] for g in grouped[:n]], prompts[:n], os.path.join(out_dir, "grid.png"),
                                cols=min(4, n))
    results["report"] = write_report(results, out_dir, title=f"{benchmark} evaluation")
    return results


def _evaluate_shapes(sampler, data_config, num_prompts, images_per_prompt, seed, batch_size, options, split):
    if data_config is None:
        raise ValueError("the shapes benchmark needs the data_config (seed, resolution, caption, num_test)")
    sizes = {"test": data_config.num_test, "validation": data_config.num_val}
    if split not in sizes:
        raise ValueError(f"shapes evaluation split must be 'test' or 'validation', got {split!r}")
    n = int(num_prompts or sizes[split])
    if n > int(sizes[split]):
        raise ValueError(f"num_prompts={n} exceeds the {split} split size {sizes[split]}")
    examples = [shapes.make_example(int(data_config.seed), split, i, int(data_config.resolution)) for i in range(n)]
    prompts = [ex.captions[data_config.caption] for ex in examples]
    graphs = [ex.scene.to_graph() for ex in examples]
    grouped, seeds = _generate(sampler, prompts, images_per_prompt, seed, batch_size)
    scores = []
    for k, (graph, images) in enumerate(zip(graphs, grouped)):
        pq = dpg.shapes_questions(graph, item_id=str(k), prompt=prompts[k])
        vqa = JudgeVQA([q.query for q in pq.questions])
        scores.append(dpg.score_tiles(images, pq, vqa, options))
    dpg_result = dpg.aggregate(scores, {}, options)
    results = {
        "benchmark": "shapes",
        "split": split,
        "caption": data_config.caption,
        "num_prompts": n,
        "images_per_prompt": images_per_prompt,
        "dpg_score": dpg_result.score,
        "dpg_l1": dpg_result.l1,
        "dpg_l2": dpg_result.l2,
        "compbench": compbench_scores(graphs, grouped),
        "per_prompt": {str(k): {"prompt": p, "score": 100.0 * s.score, "seeds": sd}
                       for k, (p, s, sd) in enumerate(zip(prompts, scores, seeds))},
    }
    return results, prompts, grouped


def _evaluate_dpg(sampler, out_dir, num_prompts, seed, batch_size, dpg_csv, vqa, options, prompts_path):
    entries = dpg.load_prompts(prompts_path)
    if num_prompts:
        entries = entries[:num_prompts]
    prompts = [e["prompt"] for e in entries]
    grouped, seeds = _generate(sampler, prompts, dpg.PIC_NUM, seed, batch_size)
    grid_dir = os.path.join(out_dir, "dpg_grids")
    os.makedirs(grid_dir, exist_ok=True)
    grids = {}
    for entry, images in zip(entries, grouped):
        grid = dpg.make_grid_2x2(images)
        grid.save(os.path.join(grid_dir, f"{entry['id']}.png"))
        grids[entry["id"]] = grid
    results = {
        "benchmark": "dpg",
        "num_prompts": len(entries),
        "images_per_prompt": dpg.PIC_NUM,
        "grid_dir": grid_dir,
        "seeds": {e["id"]: s for e, s in zip(entries, seeds)},
    }
    if dpg_csv is None or vqa is None:
        results["scored"] = False
        results["note"] = "not scored: pass dpg_csv (official dpg_bench.csv) and a vqa(image, question) function"
        return results, prompts, grouped
    questions = dpg.read_dpg_csv(dpg_csv, skip_first_row=options.skip_first_row)
    questions = {k: v for k, v in questions.items() if k in grids}
    tile = grouped[0][0].shape[0]
    scored = dpg.score_grids(grids, questions, vqa, tile, options)
    results.update({"scored": True, "dpg_score": scored.score, "dpg_l1": scored.l1, "dpg_l2": scored.l2,
                    "failed": scored.failed, "per_prompt": {p.item_id: 100.0 * p.score for p in scored.prompts}})
    return results, prompts, grouped
