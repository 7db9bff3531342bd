"""Command line: ``t2ijax <command> --config=configs/x.py:variant --workdir=DIR [flags]`` (or ``python -m t2ijax``).

  train     run the train loop (resumes from the workdir's latest checkpoint)
  sample    write a PNG grid for --prompt (repeatable) / --prompts_file, from the workdir's latest
            checkpoint (EMA params if present) or a random init (--random_init); image i uses seed
            --seed + i (in its caption and in the JSON next to the PNG), so an eval report's seed regenerates
            its image: ``t2ijax sample --prompt="<the prompt>" --seed=<its seed>``
  eval      run a benchmark (--benchmark=shapes|dpg) on the trained model: report, grid and images.npz in
            --out; DPG-Bench is scored in-process only with --dpg_csv and --vqa=module:function
  prepare   build the dataset of config.data (TFDS ArrayRecord) ahead of training
  convert   export the trained model to upstream layouts (diffusers / Hugging Face folders) in --out
  demo      end to end on one machine: prepare, train, sample a grid, evaluate on Shapes

A cascade config (``config.method = "cascade"``, e.g. configs/cascade_shapes.py) makes ``sample`` / ``eval``
run its stages (base -> super-resolution), each from its own workdir; --workdir is then optional.

Config overrides use the config's own paths: ``--config.optim.lr=3e-4 --config.mesh.fsdp=4``.
The config is locked: an unknown key is an error naming it. ``--config`` may be omitted for
sample / eval / convert: the config saved in ``<workdir>/config.json`` is used.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

COMMANDS = ("train", "sample", "eval", "prepare", "convert", "demo")

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file, path.py[:arg]", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, config.json)")
flags.DEFINE_multi_string("prompt", [], "prompt for `sample` (repeat the flag for several)")
flags.DEFINE_string("prompts_file", None, "text file with one prompt per line for `sample`")
flags.DEFINE_string("out", None, "output: PNG path for `sample`, folder for `eval` / `convert`")
flags.DEFINE_bool("random_init", False, "`sample`: no checkpoint: the weights config.init_from names (e.g. a "
                  "released adapter file), else a random init")
flags.DEFINE_bool("ema", True, "use the EMA params of the checkpoint when it has them")
flags.DEFINE_integer("num_steps", 0, "sampler steps (0: config.sample.num_steps)")
flags.DEFINE_float("guidance_scale", None, "classifier-free guidance scale (default: config.sample.guidance_scale)")
flags.DEFINE_integer("seed", 0, "sampling seed: `sample` gives image i seed S+i, `eval` gives image j of "
                     "its prompt list (each prompt repeated --images_per_prompt times) seed S+j")
flags.DEFINE_string("paint", None, "`sample`: paint-with-words segmentation image (PNG), one colour per phrase, "
                    "with --paint_map; every prompt is painted with it")
flags.DEFINE_string("paint_map", None, "`sample --paint`: JSON object (inline or a file) {colour: 'phrase,strength'}, "
                    "colour '#rrggbb' or 'r,g,b' (--paint-map is accepted too)")
flags.DEFINE_float("paint_scale", 1.0, "`sample --paint`: the global paint weight w'")
flags.DEFINE_integer("stop_after", 0, "`train`: stop (with a checkpoint) at this step, as a preemption would")
flags.DEFINE_enum("benchmark", "shapes", ["shapes", "dpg"], "`eval`: the benchmark")
flags.DEFINE_integer("num_prompts", 0, "`eval`: number of prompts (0: all)")
flags.DEFINE_integer("images_per_prompt", 4, "`eval`: images per prompt")
flags.DEFINE_enum("split", "test", ["test", "validation"], "`eval --benchmark=shapes`: prompts of this split "
                  "(validation: for tuning sampling settings without the test prompts)")
flags.DEFINE_enum("judge", "programmatic", ["programmatic", "cnn"], "`eval --benchmark=shapes`: the Shapes judge "
                  "(programmatic: t2ijax.eval.judge, the reported one; cnn: the independent second judge)")
flags.DEFINE_string("dpg_csv", None, "`eval --benchmark=dpg`: the official dpg_bench.csv (scored only with it "
                    "and --vqa)")
flags.DEFINE_string("vqa", None, "`eval --benchmark=dpg`: module:function of a vqa(image, question) -> 'yes'|'no' "
                    "callable (e.g. a mPLUG wrapper), importable from the working directory or PYTHONPATH; scores "
                    "the grids in-process with --dpg_csv")
FLAGS = flags.FLAGS


def _usage_error(message: str) -> None:
    print(f"t2ijax: error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse(argv: list[str]) -> list[str]:
    """absl flag parsing with clean errors for unknown commands, flags and config keys."""
    argv = [("--paint_map" + a[len("--paint-map"):]) if a.startswith("--paint-map") else a for a in argv]
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        _usage_error(str(e))
    except (AttributeError, KeyError) as e:  # config_flags: an override names a key the config lacks
        _usage_error(_explain_unknown_key(argv, e))
    except (TypeError, ValueError) as e:
        _usage_error(f"bad --config or override: {e}")
    if len(rest) < 2 or rest[1] not in COMMANDS:
        _usage_error(f"usage: t2ijax {{{'|'.join(COMMANDS)}}} --config=... --workdir=... "
                     f"(got {rest[1:2] or 'no command'})")
    if len(rest) > 2:
        _usage_error(f"unexpected arguments {rest[2:]}")
    return rest


def _explain_unknown_key(argv: list[str], error: Exception) -> str:
    """Name the offending override: re-walk each ``--config.a.b=v`` against the loaded config."""
    from t2ijax.config_utils import load_config, set_by_path
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
    if spec is not None:
        config = load_config(spec)
        for item in overrides:
            key, _, value = item.partition("=")
            try:
                set_by_path(config, key, value or "0")
            except KeyError as e:
                return str(e.args[0])
            except (TypeError, ValueError):
                pass
    return f"unknown config key in overrides {overrides}: {error}"


def _config(required: bool = True):
    if _CONFIG.value is not None:
        return _CONFIG.value
    if FLAGS.workdir and not required:
        from t2ijax.train.sampling import config_from_workdir
        return config_from_workdir(FLAGS.workdir)
    _usage_error("--config is required" + ("" if required else " (or a --workdir holding config.json)"))


def _workdir() -> str:
    if not FLAGS.workdir:
        _usage_error("--workdir is required")
    return FLAGS.workdir


def _import(module: str, what: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        _usage_error(f"{what} needs {module}, which is not available ({e})")


def _prompts() -> list[str]:
    prompts = list(FLAGS.prompt)
    if FLAGS.prompts_file:
        import json
        with open(FLAGS.prompts_file) as f:
            lines = [line.strip() for line in f if line.strip()]
        # .jsonl (e.g. t2ijax/data/assets/dpg_bench_prompts.jsonl): one {"prompt": ...} object a line
        prompts += [json.loads(line)["prompt"] for line in lines] if FLAGS.prompts_file.endswith(".jsonl") else lines
    if not prompts:
        _usage_error("give --prompt (repeatable) or --prompts_file")
    empty = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if empty:
        _usage_error(f"prompt {empty[0]} is empty: give text (the empty prompt is the model's unconditional input; "
                     "sample it with --prompt=' ' only if that is what you want)" if len(empty) == 1 else
                     f"prompts {empty[:10]} are empty: give text")
    return prompts


def _is_cascade(config) -> bool:
    """A ``method = "cascade"`` config (configs/cascade_shapes.py): stages with their own configs and workdirs."""
    return config is not None and config.get("method") == "cascade"


def _cascade_sampler(config, random_init: bool):
    """`t2ijax.methods.cascade`: base -> SR stages, each loaded from its own workdir (or random)."""
    if FLAGS.num_steps or FLAGS.guidance_scale is not None:
        _usage_error("a cascade samples each stage with its own settings: use --config.stages.<name>.num_steps=N / "
                     "--config.stages.<name>.guidance_scale=G (and .aug_level for SR stages) instead of --num_steps / "
                     "--guidance_scale")
    from t2ijax.methods.cascade import load_cascade_from_config
    try:
        return load_cascade_from_config(config, random_init=random_init, ema=FLAGS.ema).sampler()
    except (ValueError, FileNotFoundError) as e:
        _usage_error(f"cascade: {e}")


def _cascade_workdir(config) -> str:
    """Where a cascade's eval writes by default: --workdir, else config.workdir."""
    return FLAGS.workdir or config.get("workdir") or "."


def _sampler(config, workdir, random_init: bool, paint: dict | None = None):
    """`t2ijax.train.sampling.make_sampler` over the loaded model: sampler(prompts, seeds) -> uint8 images;
    `paint`: `sample`'s paint-with-words inputs (`_paint_kwargs`)."""
    paint = paint or {}
    if _is_cascade(config):
        if paint:
            _usage_error("--paint: paint-with-words is not available for a cascade; paint its base model")
        return _cascade_sampler(config, random_init)
    from t2ijax.train.sampling import load_for_inference, make_sampler
    method, params, frozen, _ = load_for_inference(config, workdir, random_init=random_init, ema=FLAGS.ema)
    try:
        return make_sampler(method, params, frozen, num_steps=FLAGS.num_steps or None,
                            guidance_scale=FLAGS.guidance_scale, **paint)
    except ValueError as e:  # a method without sample()
        _usage_error(f"method {config.method!r}: {e}")


def _paint_kwargs() -> dict:
    """`sample`'s paint-with-words inputs, checked before any model is loaded or compiled."""
    if FLAGS.paint is None and FLAGS.paint_map is None:
        return {}
    if FLAGS.paint is None or FLAGS.paint_map is None:
        _usage_error("paint-with-words needs both --paint=<segmentation.png> and --paint_map=<JSON>")
    from t2ijax.methods.paint_with_words import load_paint
    try:
        paint = load_paint(FLAGS.paint, FLAGS.paint_map)
    except (OSError, ValueError) as e:
        _usage_error(f"--paint: {e}")
    return {"paint": paint, "paint_scale": FLAGS.paint_scale}


def cmd_train() -> None:
    from t2ijax.train.loop import train
    train(_config(), _workdir(), stop_after=FLAGS.stop_after or None)


def cmd_sample() -> str:
    import json

    config = _config(required=False)
    prompts = _prompts()
    paint = _paint_kwargs()
    if paint:
        from t2ijax.methods.paint_with_words import check_phrases
        try:
            check_phrases(paint["paint"], prompts)
        except ValueError as e:
            _usage_error(f"--paint_map: {e}")
    sampler = _sampler(config, None if FLAGS.random_init or _is_cascade(config) else _workdir(), FLAGS.random_init,
                       paint)
    seeds = [FLAGS.seed + i for i in range(len(prompts))]
    images = sampler(prompts, seeds)
    grid = _import("t2ijax.eval.grid", "sample")
    out = FLAGS.out or os.path.join(FLAGS.workdir or ".", "samples.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    grid.save_grid(list(images), [f"seed {s}: {p}" for p, s in zip(prompts, seeds)], out,
                   cols=min(4, len(prompts)))
    record = os.path.splitext(out)[0] + ".json"
    with open(record, "w") as f:
        json.dump({"images": [{"prompt": p, "seed": s} for p, s in zip(prompts, seeds)],
                   "sampler": sampler.settings, "workdir": None if FLAGS.random_init else FLAGS.workdir,
                   "random_init": FLAGS.random_init, "ema": FLAGS.ema}, f, indent=1)
    print(f"[t2ijax] wrote {out} ({len(prompts)} images, image i with seed {FLAGS.seed}+i: "
          f"seeds {seeds[0]}..{seeds[-1]}) and {record} (prompt and seed of each image)")
    return out


def _dpg_inputs(evaluate_module):
    """(vqa callable or None, csv path or None) from --vqa / --dpg_csv, checked before any model is loaded."""
    if FLAGS.benchmark != "dpg":
        if FLAGS.vqa or FLAGS.dpg_csv:
            _usage_error("--vqa and --dpg_csv apply to --benchmark=dpg only (shapes is answered by the "
                         "programmatic judge)")
        return None, None
    if FLAGS.judge != "programmatic":
        _usage_error("--judge applies to --benchmark=shapes only (DPG-Bench is answered by --vqa)")
    if FLAGS.dpg_csv:
        try:
            evaluate_module.check_dpg_csv(FLAGS.dpg_csv, flag="--dpg_csv")
        except FileNotFoundError as e:
            _usage_error(str(e))
    if not FLAGS.vqa:
        return None, FLAGS.dpg_csv
    if os.getcwd() not in sys.path:  # module:function from the working directory, as `python -m` finds it
        sys.path.insert(0, os.getcwd())
    try:
        return evaluate_module.load_vqa(FLAGS.vqa, flag="--vqa"), FLAGS.dpg_csv
    except ValueError as e:
        _usage_error(str(e))


def _print_eval(results: dict, out: str) -> None:
    if results.get("scored") is False:
        print(f"[t2ijax] DPG-Bench not scored: {results['not_scored_because']}; wrote the grids and the report only.")
        print("\n".join(f"[t2ijax]   {line}" for line in results["how_to_score"]))
    else:
        print(f"[t2ijax] {results['benchmark']} DPG score {results['dpg_score']:.2f} "
              f"({results['num_prompts']} prompts, protocol {results['dpg_protocol']})")
    print(f"[t2ijax] eval report in {out} (report.md, report.json, grid.png, images.npz)")


def cmd_eval() -> dict:
    config = _config(required=False)
    if FLAGS.paint or FLAGS.paint_map:
        _usage_error("--paint / --paint_map apply to `t2ijax sample` (one layout for its prompts), not to `eval`")
    workdir = _cascade_workdir(config) if _is_cascade(config) else _workdir()
    evaluate_module = _import("t2ijax.eval.evaluate", "eval")
    vqa, dpg_csv = _dpg_inputs(evaluate_module)
    sampler = _sampler(config, workdir, FLAGS.random_init)
    out = FLAGS.out or os.path.join(workdir, "eval", FLAGS.benchmark)
    results = evaluate_module.evaluate(sampler, benchmark=FLAGS.benchmark, out_dir=out, data_config=config.data,
                                       num_prompts=FLAGS.num_prompts or None,
                                       images_per_prompt=FLAGS.images_per_prompt, seed=FLAGS.seed, dpg_csv=dpg_csv,
                                       vqa=vqa, split=FLAGS.split, judge=FLAGS.judge)
    _print_eval(results, out)
    return results


def cmd_prepare() -> None:
    config = _config()
    if config.data.name == "synthetic":
        print("[t2ijax] data.name='synthetic' needs no preparation")
        return
    if config.data.name != "feature_cache":  # a feature cache is built by the method's prepare (below)
        builder = _import("t2ijax.data.tfds_builders", "prepare").prepare(config.data)
        print(f"[t2ijax] dataset ready: {getattr(builder, 'data_dir', builder)}")
    from t2ijax.methods import get_method
    method = get_method(config.method, config)
    if callable(getattr(method, "prepare", None)):  # method-specific assets, e.g. ELLA's feature cache
        print(f"[t2ijax] {config.method} prepared: {method.prepare(config)}")


def cmd_convert() -> None:
    config = _config(required=False)
    workdir = _workdir()
    if not FLAGS.out:
        _usage_error("convert needs --out (a folder)")
    from t2ijax.train.sampling import load_for_inference
    method, params, _, _ = load_for_inference(config, workdir, ema=FLAGS.ema)
    if not callable(getattr(method, "export", None)):
        _usage_error(f"method {config.method!r} defines no export(params, out_dir)")
    written = method.export(params, FLAGS.out)
    print(f"[t2ijax] exported to {FLAGS.out}: {written}")


def cmd_demo() -> None:
    """prepare -> train -> sample held-out prompts -> score (`t2ijax.demo.run_demo`); defaults: the README demo."""
    from t2ijax import demo
    config = demo.default_config() if _CONFIG.value is None else _config()
    demo.run_demo(config, FLAGS.workdir or demo.DEFAULT_WORKDIR)


def _main(argv: list[str]) -> None:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    from t2ijax.sharding import maybe_initialize_distributed
    maybe_initialize_distributed()
    {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "prepare": cmd_prepare, "convert": cmd_convert,
     "demo": cmd_demo}[argv[1]]()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app.run(_main, argv=argv if argv is not None else sys.argv, flags_parser=_parse)


if __name__ == "__main__":
    main()
