"""Run a benchmark end to end for a sampler: generate, score, write the report, a grid and the images.

    evaluate(sampler, benchmark="shapes", out_dir="runs/x/eval", data_config=cfg)
    evaluate(sampler, benchmark="dpg", out_dir=..., dpg_csv="dpg_bench.csv", vqa="my_mplug:vqa")
    generated = load_generated("runs/x/eval")    # images, seeds, prompts: re-judge without re-sampling

`sampler(prompts: list[str], seeds: list[int]) -> images` returns one image per
prompt (N, H, W, 3), uint8 or float in [-1, 1]; the same prompt appears
`images_per_prompt` times, image j of the flat prompt list with seed `seed + j`.
The seeds are recorded in the report and in `images.npz`; with the samplers of
`t2ijax.train.sampling.make_sampler` a recorded seed regenerates its image
(``t2ijax sample --prompt=... --seed=S``). DPG-Bench does not specify seeds upstream.

shapes  held-out Shapes scenes (test split; validation for tuning), prompts = the
        configured caption kind. Scores: T2I-CompBench-style category accuracy and a
        DPG-style score over the scene's question graph, both answered by the judge.
        Category scores pool the answers of all images of a prompt
        (`DPGOptions.fixed()`) unless `dpg_options` is given.
dpg     the 1,065 DPG-Bench prompts (or the first `num_prompts`). The 2x2 grids
        are written as `dpg_grids/<id>.png`, the layout the official script
        reads. Scored here (official protocol, `DPGOptions.official()`, unless
        `dpg_options` is given) only when the official `dpg_bench.csv` and a VQA
        function are given; otherwise the report says `scored: false`, why, and
        how to score the grids (`how_to_score`).

Every run writes `images.npz` (`load_generated`): `images` (P, K, H, W, 3) uint8,
`seeds` (P, K) int64 and `prompts` (P,) fixed-width unicode, P prompts x K images.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Callable

import numpy as np

from t2ijax.data import shapes
from t2ijax.eval import dpg
from t2ijax.eval.compbench import compbench_scores
from t2ijax.eval.grid import save_grid, to_uint8
from t2ijax.eval.judge import JudgeVQA
from t2ijax.eval.report import write_report
from t2ijax.eval.shapes_stress import oracle_floors

BENCHMARKS = ("shapes", "dpg")
# Shapes judges by name: the programmatic judge (the reported one) and the independent CNN judge.
JUDGES = {"programmatic": "t2ijax.eval.judge:detect", "cnn": "t2ijax.eval.cnn_judge:detect"}
GENERATED_FILE = "images.npz"
OFFICIAL_SCRIPT = "TencentQQGYLab/ELLA dpg_bench/compute_dpg_bench.py"
MPLUG = "mPLUG-large, modelscope damo/mplug_visual-question-answering_coco_large_en"


def load_vqa(spec, flag: str = "vqa") -> Callable:
    """A ``vqa(image, question) -> "yes" | "no"`` callable: `spec` itself when callable, else the attribute
    named by a ``"module:function"`` string (dotted module importable from sys.path; the function part may
    be dotted too, e.g. ``my_mplug:model.vqa``). Errors name `flag` and what is wrong."""
    if callable(spec):
        return spec
    module_name, sep, attr = str(spec).partition(":")
    if not (sep and module_name and attr):
        raise ValueError(f"{flag}={spec!r}: expected module:function, e.g. {flag}=my_vqa:answer")
    try:
        value = importlib.import_module(module_name)
    except Exception as e:  # whatever the user's module raises on import, reported with the flag
        raise ValueError(f"{flag}={spec!r}: cannot import module {module_name!r} ({type(e).__name__}: {e})") from e
    for part in attr.split("."):
        if not hasattr(value, part):
            raise ValueError(f"{flag}={spec!r}: {getattr(value, '__name__', value)!r} has no attribute {part!r}")
        value = getattr(value, part)
    if not callable(value):
        raise ValueError(f"{flag}={spec!r}: {attr} is a {type(value).__name__}, not a callable "
                         f"vqa(image, question) -> 'yes' | 'no'")
    return value


def check_dpg_csv(path: str, flag: str = "dpg_csv") -> None:
    """Fail before any sampling when the question CSV is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}={path!r}: no such file (the official dpg_bench.csv of TencentQQGYLab/ELLA)")


def _save_generated(out_dir: str, prompts: list[str], grouped, seeds) -> str:
    """Write `images.npz` (see the module docstring): plain arrays, compressed, nothing pickled."""
    path = os.path.join(out_dir, GENERATED_FILE)
    np.savez_compressed(path, images=np.asarray(grouped, np.uint8), seeds=np.asarray(seeds, np.int64),
                        prompts=np.asarray(prompts, dtype=str))
    return path


def load_generated(out_dir: str) -> dict:
    """What `evaluate` generated into `out_dir`: {"images": uint8 (P, K, H, W, 3), "seeds": int64 (P, K),
    "prompts": list of P str}; image [p, k] is prompt p sampled with seed [p, k]."""
    with np.load(os.path.join(out_dir, GENERATED_FILE), allow_pickle=False) as data:
        return {"images": data["images"], "seeds": data["seeds"], "prompts": [str(p) for p in data["prompts"]]}


def _protocol(options: dpg.DPGOptions) -> str:
    """The name of a DPG protocol, for reports."""
    names = {dpg.DPGOptions.official(): "official (DPG-Bench script quirks on)",
             dpg.DPGOptions.fixed(): "fixed (category scores from all images, no first-row drop)"}
    return names.get(options, "custom")


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
             dpg_csv: str | None = None, vqa: Callable | str | None = None,
             dpg_options: dpg.DPGOptions | None = None, prompts_path: str | None = None, split: str = "test",
             judge: str | Callable = "programmatic") -> dict:
    """Generate with `sampler`, score `benchmark`, write `report.json`, `report.md`, `grid.png` and
    `images.npz` into `out_dir`; returns the results.

    `split` (shapes only): "test" (the held-out colour/shape pairs; the reported number) or "validation"
    (for tuning sampling settings such as the guidance scale without looking at the test prompts).
    `judge` (shapes only): "programmatic" (t2ijax.eval.judge, the reported judge), "cnn" (the independent
    second judge, t2ijax.eval.cnn_judge) or a callable image -> list of judge.Detection.
    `dpg_csv`, `vqa` (dpg only): the official question CSV and a ``vqa(image, question) -> "yes" | "no"``
    callable or its ``"module:function"`` name; both are checked before anything is sampled.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
    if images_per_prompt <= 0:
        raise ValueError(f"images_per_prompt must be positive, got {images_per_prompt}")
    if benchmark == "shapes":
        if dpg_csv is not None or vqa is not None:
            raise ValueError("dpg_csv and vqa apply to benchmark='dpg'; the shapes benchmark is answered by the "
                             "programmatic judge")
        options = dpg_options or dpg.DPGOptions.fixed()
    else:
        if judge != "programmatic":
            raise ValueError("judge applies to benchmark='shapes'; DPG-Bench is answered by the vqa function")
        vqa = None if vqa is None else load_vqa(vqa)
        if dpg_csv is not None:
            check_dpg_csv(dpg_csv)
        options = dpg_options or dpg.DPGOptions.official()
    os.makedirs(out_dir, exist_ok=True)
    if benchmark == "shapes":
        results, prompts, grouped, seeds = _evaluate_shapes(sampler, data_config, num_prompts, images_per_prompt,
                                                            seed, batch_size, options, split, judge)
    else:
        results, prompts, grouped, seeds = _evaluate_dpg(sampler, out_dir, num_prompts, seed, batch_size, dpg_csv,
                                                         vqa, options, prompts_path)
    results.update({"seed": seed, "dpg_protocol": _protocol(options), "dpg_options": dataclasses.asdict(options)})
    if getattr(sampler, "settings", None):
        results["sampler"] = dict(sampler.settings)
    results["generated"] = _save_generated(out_dir, prompts, grouped, seeds)
    n = min(grid_images, len(prompts))
    results["grid"] = save_grid([g[0] for g in grouped[:n]], prompts[:n], os.path.join(out_dir, "grid.png"),
                                cols=min(4, n))
    results["report"] = write_report(results, out_dir, title=f"{benchmark} evaluation")
    if results.get("scored") is False:
        _append_not_scored(results["report"]["markdown"], results)
    return results


def _append_not_scored(markdown_path: str, results: dict) -> None:
    """Say in report.md, not only in the JSON, that the benchmark is not scored, why, and how to score it."""
    lines = ["## Not scored", "", f"Not scored: {results['not_scored_because']}.", "", "How to score:", ""]
    with open(markdown_path, "a") as f:
        f.write("\n".join(lines + [f"    {line}" for line in results["how_to_score"]]) + "\n")


def _evaluate_shapes(sampler, data_config, num_prompts, images_per_prompt, seed, batch_size, options, split, judge):
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
    load_judge(judge)
    grouped, seeds = _generate(sampler, prompts, images_per_prompt, seed, batch_size)
    scored = score_shapes(graphs, prompts, grouped, judge=judge, options=options)
    results = {
        "benchmark": "shapes",
        "split": split,
        "caption": data_config.caption,
        # what rebuilds the scenes: shapes.make_example(data.seed, split, i, data.resolution), i < num_prompts
        "data": {"seed": int(data_config.seed), "resolution": int(data_config.resolution),
                 "caption": data_config.caption},
        "num_prompts": n,
        "images_per_prompt": images_per_prompt,
        **scored,
        # what a perfect judge gives images that ignore the prompt (palette) or swap every shape
        "oracle_floors": oracle_floors(graphs),
    }
    for k, sd in enumerate(seeds):
        results["per_prompt"][str(k)]["seeds"] = sd
    return results, prompts, grouped, seeds


def shapes_scenes(data: dict, split: str, num_prompts: int) -> list[dict]:
    """The scene graphs of the first `num_prompts` prompts of a Shapes split (`data`: seed, resolution)."""
    return [shapes.sample_scene(int(data["seed"]), split, i, int(data["resolution"])).to_graph()
            for i in range(num_prompts)]


def score_shapes(graphs: list[dict], prompts: list[str], grouped, *, judge: str | Callable = "programmatic",
                 options: dpg.DPGOptions | None = None) -> dict:
    """Judge images of Shapes prompts: `grouped[k]` are the images of the scene `graphs[k]` (prompt
    `prompts[k]`). Each image is detected once by `judge` (a name of `JUDGES` or a callable image ->
    detections); the DPG-style score (`options`, `DPGOptions.fixed()` by default) and the CompBench-style
    categories are answered from those detections."""
    detector = load_judge(judge)
    options = options or dpg.DPGOptions.fixed()
    detections = [[detector(image) for image in images] for images in grouped]
    scores = []
    for k, (graph, found) in enumerate(zip(graphs, detections)):
        pq = dpg.shapes_questions(graph, item_id=str(k), prompt=prompts[k])
        scores.append(dpg.score_tiles(found, pq, JudgeVQA([q.query for q in pq.questions], detector=_given), options))
    result = dpg.aggregate(scores, {}, options)
    return {
        "judge": judge if isinstance(judge, str) else _name(judge),
        "dpg_score": result.score,
        "dpg_l1": result.l1,
        "dpg_l2": result.l2,
        "compbench": compbench_scores(graphs, detections, detector=_given),
        # per prompt: the DPG-style score and the CompBench-style question accuracy of each category it has
        # (paired comparisons per category need them)
        "per_prompt": {str(k): {"prompt": p, "score": 100.0 * s.score,
                                "compbench": {name: c["question"] for name, c in
                                              compbench_scores([g], [found], detector=_given).items()
                                              if c["num_questions"]}}
                       for k, (p, s, g, found) in enumerate(zip(prompts, scores, graphs, detections))},
    }


def _given(detections):
    return detections


def load_judge(judge: str | Callable) -> Callable:
    """A Shapes detector `image -> list[judge.Detection]`: a callable as is, or one of `JUDGES` by name."""
    if callable(judge):
        return judge
    if judge not in JUDGES:
        raise ValueError(f"unknown Shapes judge {judge!r}; expected one of {sorted(JUDGES)}")
    module, attr = JUDGES[judge].split(":")
    return getattr(importlib.import_module(module), attr)


def rejudge(out_dir: str, judge: str | Callable = "programmatic", options: dpg.DPGOptions | None = None) -> dict:
    """Score the images a Shapes evaluation saved in `out_dir` again (another judge, another protocol)
    without sampling: the scenes are rebuilt from the report's data, split and prompt count."""
    import json

    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    if report.get("benchmark") != "shapes":
        raise ValueError(f"{out_dir}: rejudge needs a shapes evaluation, found {report.get('benchmark')!r}")
    generated = load_generated(out_dir)
    prompts = [str(p) for p in generated["prompts"]]
    graphs = shapes_scenes(report["data"], report["split"], len(prompts))
    return score_shapes(graphs, prompts, list(generated["images"]), judge=judge, options=options)


def _how_to_score_dpg(grid_dir: str, tile: int, out_dir: str) -> list[str]:
    """Plain instructions for scoring a folder of DPG-Bench grids (for reports and the terminal)."""
    grid_dir = os.path.abspath(grid_dir)
    results = os.path.join(os.path.abspath(out_dir), "dpg_official_results.txt")
    return [
        f"The grids in {grid_dir} are not a score by themselves: DPG-Bench asks a VQA model about every tile",
        f"the questions of dpg_bench.csv (officially {MPLUG}). Either:",
        f"(a) the official script, {OFFICIAL_SCRIPT}, run from a clone of that repository:",
        f"      accelerate launch dpg_bench/compute_dpg_bench.py --image-root-path {grid_dir} --resolution {tile} "
        f"--pic-num 4 --vqa-model mplug --csv dpg_bench/dpg_bench.csv --res-path {results}",
        "    (--resolution is the side of one tile; the script's --pic-num defaults to 1, so pass 4)",
        "(b) in process: rerun with --dpg_csv=path/to/dpg_bench.csv --vqa=my_module:vqa (same other flags), where",
        "    vqa(image: PIL.Image, question: str) returns 'yes' or 'no' (e.g. a wrapper of the same mPLUG pipeline),",
        f"    or score these grids without re-sampling: t2ijax.eval.dpg.score_folder('{grid_dir}', "
        f"dpg.read_dpg_csv(csv_path), vqa, {tile}, dpg.DPGOptions.official())",
    ]


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
    tile = grouped[0][0].shape[0]
    results = {
        "benchmark": "dpg",
        "num_prompts": len(entries),
        "images_per_prompt": dpg.PIC_NUM,
        "grid_dir": grid_dir,
        "tile_resolution": tile,
        "seeds": {e["id"]: s for e, s in zip(entries, seeds)},
    }
    missing = [what for what, given in (("no question CSV (dpg_csv / --dpg_csv)", dpg_csv),
                                        ("no VQA function (vqa / --vqa)", vqa)) if given is None]
    if missing:
        results.update({"scored": False, "not_scored_because": " and ".join(missing) + " given",
                        "how_to_score": _how_to_score_dpg(grid_dir, tile, out_dir)})
        return results, prompts, grouped, seeds
    questions = dpg.read_dpg_csv(dpg_csv, skip_first_row=options.skip_first_row)
    questions = {k: v for k, v in questions.items() if k in grids}
    scored = dpg.score_grids(grids, questions, vqa, tile, options)
    results.update({"scored": True, "dpg_csv": os.path.abspath(dpg_csv), "vqa": _name(vqa),
                    "dpg_score": scored.score, "dpg_l1": scored.l1, "dpg_l2": scored.l2,
                    "failed": scored.failed, "per_prompt": {p.item_id: 100.0 * p.score for p in scored.prompts}})
    return results, prompts, grouped, seeds


def _name(fn: Callable) -> str:
    """module:qualname of a callable, for reports."""
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"
