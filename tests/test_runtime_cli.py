"""`t2ijax train` end to end on the toy method: JSONL + TensorBoard + checkpoints + config.json, then resume;
`t2ijax sample` seeds and `t2ijax eval --benchmark=dpg` with and without a VQA plug-in."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = f'''
from t2ijax.config_utils import import_sibling
common = import_sibling({os.path.join(REPO, "configs", "common.py")!r}, "common")

def get_config(arg=None):
    """Toy run. Launch: t2ijax train --config=this.py --workdir=DIR"""
    return common.toy_config(total_steps=4, log_every=2, checkpoint_every=2, keep_last=1, keep_period=4)
'''


def run_cli(*args, timeout=600, cwd=REPO, returncode=0):
    proc = subprocess.run([sys.executable, "-m", "t2ijax", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    print(proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.returncode == returncode, proc.stderr[-3000:]
    return proc.stdout if returncode == 0 else proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    config = tmp / "toy_cfg.py"
    config.write_text(CONFIG)
    workdir = tmp / "run"
    out = run_cli("train", f"--config={config}", f"--workdir={workdir}")
    return config, workdir, out


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_train_writes_metrics_tensorboard_checkpoint_config(trained):
    config, workdir, out = trained
    assert "compile time=" in out and "step 4/4" in out
    rows = read_metrics(workdir)
    logged = [r for r in rows if "loss" in r]
    assert [r["step"] for r in logged] == [2, 4]
    for key in ("loss", "grad_norm", "lr", "img_per_s", "steps_per_s", "tflops_per_device"):
        assert key in logged[-1], key
    assert rows[0]["compile_seconds"] > 0
    events = os.listdir(os.path.join(workdir, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["method"] == "toy" and saved["total_steps"] == 4
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps == [4]  # keep_last=1; step 2 is not a multiple of keep_period=4
    assert {"params", "opt_state", "ema", "train_meta", "config", "data_iter"} <= set(
        os.listdir(os.path.join(workdir, "checkpoints", "4")))


def test_sample_from_checkpoint_writes_png(trained):
    config, workdir, _ = trained
    out = os.path.join(workdir, "grid.png")
    run_cli("sample", f"--workdir={workdir}", "--prompt=red square", "--prompt=blue square", f"--out={out}",
            "--num_steps=3", "--seed=5")  # no --config: the run's config.json is used
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] >= 2 * 8
    record = json.load(open(os.path.join(workdir, "grid.json")))  # one seed per image, next to the PNG
    assert record["images"] == [{"prompt": "red square", "seed": 5}, {"prompt": "blue square", "seed": 6}]
    assert record["sampler"]["num_steps"] == 3


def test_train_resumes_from_latest(trained):
    config, workdir, _ = trained
    out = run_cli("train", f"--config={config}", f"--workdir={workdir}", "--config.total_steps=6")
    assert "step 6/6" in out
    logged = [r["step"] for r in read_metrics(workdir) if "loss" in r]
    assert logged == [2, 4, 6]  # continued at 5, not restarted at 1
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps == [4, 6]  # 4 kept by keep_period, 6 is the latest


def first_tile(png_path, resolution):
    """The first image of a `save_grid` PNG (pad 4, upscaled by nearest to >= 128 px), at its own resolution."""
    scale = -(-128 // resolution)
    grid = np.asarray(Image.open(png_path).convert("RGB"))
    return grid[4:4 + resolution * scale:scale, 4:4 + resolution * scale:scale]


def test_eval_dpg_without_vqa_says_unscored_and_its_seeds_regenerate_images(trained, tmp_path):
    from t2ijax.eval.evaluate import load_generated
    from t2ijax.train.sampling import regenerated_matches

    _, workdir, _ = trained
    out = tmp_path / "dpg"
    stdout = run_cli("eval", f"--workdir={workdir}", "--benchmark=dpg", "--num_prompts=2", "--num_steps=3",
                     "--seed=100", f"--out={out}")
    assert "not scored: no question CSV" in stdout and "no VQA function" in stdout
    assert "compute_dpg_bench.py" in stdout and "--vqa=" in stdout
    report = json.load(open(out / "report.json"))
    assert report["scored"] is False and report["dpg_protocol"].startswith("official")
    assert "## Not scored" in (out / "report.md").read_text()
    assert len(os.listdir(out / "dpg_grids")) == 2
    generated = load_generated(str(out))
    assert generated["seeds"].tolist() == [[100, 101, 102, 103], [104, 105, 106, 107]]
    # image 2 of prompt 1 (sampled in a padded batch of 16) regenerated alone from its recorded seed
    prompt, seed = generated["prompts"][1], int(generated["seeds"][1, 2])
    png = tmp_path / "again.png"
    run_cli("sample", f"--workdir={workdir}", f"--prompt={prompt}", f"--seed={seed}", "--num_steps=3", f"--out={png}")
    assert json.load(open(tmp_path / "again.json"))["images"] == [{"prompt": prompt, "seed": seed}]
    assert regenerated_matches(generated["images"][1, 2], first_tile(png, 8))


def test_eval_dpg_scored_by_a_vqa_plugin(trained, tmp_path):
    from t2ijax.eval import dpg

    _, workdir, _ = trained
    ids = [p["id"] for p in dpg.load_prompts()[:2]]
    csv_path = tmp_path / "dpg_bench.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(dpg.CSV_COLUMNS)
        for item in ids:
            for pid in (1, 2):
                w.writerow([item, "p", "k", pid, "0", "entity", "entity - whole", "entity - whole (x)", f"q{pid}?"])
    (tmp_path / "my_vqa.py").write_text("def answer(image, question):\n"
                                        "    return 'yes' if question == 'q1?' else 'no'\n")
    out = tmp_path / "dpg"
    stdout = run_cli("eval", f"--workdir={workdir}", "--benchmark=dpg", "--num_prompts=2", "--num_steps=3",
                     f"--dpg_csv={csv_path}", "--vqa=my_vqa:answer", f"--out={out}", cwd=tmp_path)
    # official protocol: the first prompt lost its first question (quirk 2) -> 0/1, the second 1/2
    assert "DPG score 25.00" in stdout
    report = json.load(open(out / "report.json"))
    assert report["scored"] is True and report["dpg_score"] == pytest.approx(25.0)
    assert report["vqa"] == "my_vqa:answer"


@pytest.mark.parametrize("args, message", [
    (["--vqa=no_such_module:answer"], "--vqa='no_such_module:answer': cannot import module 'no_such_module'"),
    (["--vqa=os:sep"], "--vqa='os:sep': sep is a str, not a callable"),
    (["--vqa=os"], "--vqa='os': expected module:function"),
    (["--dpg_csv=missing.csv"], "--dpg_csv='missing.csv': no such file"),
    (["--benchmark=shapes", "--vqa=json:loads"], "--vqa and --dpg_csv apply to --benchmark=dpg only"),
])
def test_eval_bad_dpg_flags_fail_before_loading_a_model(tmp_path, args, message):
    config = tmp_path / "toy_cfg.py"
    config.write_text(CONFIG)
    # the workdir holds no checkpoint: loading the model first would fail with another error
    stderr = run_cli("eval", f"--config={config}", f"--workdir={tmp_path / 'empty'}", "--benchmark=dpg", *args,
                     returncode=2)
    assert message in stderr
