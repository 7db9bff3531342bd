"""Smoke test of the `t2ijax demo` code path (configs/demo_shapes.py:tiny): data, training, both evaluations, outputs."""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from t2ijax import demo
from t2ijax.eval.evaluate import load_generated
from t2ijax.config_utils import load_config

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo_shapes.py")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    config = load_config(f"{CONFIG}:tiny", [f"data.data_dir={root / 'data'}"])
    workdir = str(root / "run")
    return config, workdir, demo.run_demo(config, workdir)


def test_demo_writes_grid_and_report_with_both_scores(tiny_run):
    config, workdir, summary = tiny_run
    grid = os.path.join(workdir, "demo_grid.png")
    assert summary["grid"] == grid and os.path.exists(grid)
    with Image.open(grid) as image:
        assert image.format == "PNG" and image.width >= 2 * 128  # two prompts side by side, upscaled tiles

    with open(os.path.join(workdir, "demo_report.json")) as f:
        report = json.load(f)
    for key in ("conditional_dpg_score", "unconditional_dpg_score"):
        assert isinstance(report[key], float) and 0.0 <= report[key] <= 100.0 and math.isfinite(report[key])
    assert report["score_gap"] == pytest.approx(report["conditional_dpg_score"] - report["unconditional_dpg_score"])
    assert report["num_prompts"] == config.demo.num_prompts == len(report["per_prompt"])
    assert report["split"] == "test" and list(report["splits"]) == list(config.demo.splits) == ["test", "validation"]
    for split in report["splits"].values():
        assert split["num_prompts"] == config.demo.num_prompts
        assert 0.0 <= split["conditional_dpg_score"] <= 100.0 and 0.0 <= split["unconditional_dpg_score"] <= 100.0
    assert report["images_per_prompt"] == config.demo.images_per_prompt
    assert report["train_steps"] == config.total_steps
    assert "empty caption" in report["unconditional"]

    with open(os.path.join(workdir, "demo_report.md")) as f:
        markdown = f.read()
    assert f"| conditional (guidance {config.sample.guidance_scale:g}) | unconditional baseline |" in markdown
    for split, r in report["splits"].items():
        assert f"{r['num_prompts']} prompts | {r['conditional_dpg_score']:.2f} | {r['unconditional_dpg_score']:.2f} |" \
            in markdown
        for kind in ("conditional", "unconditional"):
            for name in ("report.json", "report.md", "grid.png", "images.npz"):
                assert os.path.exists(os.path.join(workdir, "eval", split, kind, name)), (split, kind, name)
        # the unconditional baseline: same seeds (hence same initial noise), empty caption, guidance 1
        cond, uncond = (load_generated(os.path.join(workdir, "eval", split, kind))
                        for kind in ("conditional", "unconditional"))
        assert np.array_equal(cond["seeds"], uncond["seeds"]) and cond["prompts"] == uncond["prompts"]
        with open(os.path.join(workdir, "eval", split, "unconditional", "report.json")) as f:
            assert json.load(f)["sampler"] == {"num_steps": config.sample.num_steps, "guidance_scale": 1.0,
                                               "unconditional": True}
    print(f"tiny demo: conditional {report['conditional_dpg_score']:.2f} "
          f"unconditional {report['unconditional_dpg_score']:.2f} seconds {report['seconds']}")


def test_bad_demo_config_fails_before_compute(tmp_path):
    config = load_config(f"{CONFIG}:tiny", ["demo.num_prompts=100"])
    with pytest.raises(ValueError, match="num_prompts=100 exceeds the test split"):
        demo.run_demo(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")
    with pytest.raises(ValueError, match="demo.splits"):
        demo.run_demo(load_config(f"{CONFIG}:tiny", ["demo.splits=('test', 'train')"]), str(tmp_path / "run"))
    with pytest.raises(ValueError, match="txt2img"):
        demo.run_demo(load_config(f"{CONFIG}:tiny", ["method=toy"]), str(tmp_path / "run"))


def test_default_config_is_the_cpu_variant():
    config = demo.default_config()
    assert config.method == "txt2img" and config.data.name == "shapes" and config.data.resolution == 32
    assert config.demo.images_per_prompt == 4
    assert demo.default_config_path().endswith(os.path.join("configs", "demo_shapes.py"))
