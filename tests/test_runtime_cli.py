"""`t2ijax train` end to end on the toy method: JSONL + TensorBoard + checkpoints + config.json, then resume."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = f'''
from t2ijax.config_utils import import_sibling
common = import_sibling({os.path.join(REPO, "configs", "common.py")!r}, "common")

def get_config(arg=None):
    """Toy run. Launch: t2ijax train --config=this.py --workdir=DIR"""
    return common.toy_config(total_steps=4, log_every=2, checkpoint_every=2, keep_last=1, keep_period=4)
'''


def run_cli(*args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "t2ijax", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    print(proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


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
            "--num_steps=3")  # no --config: the run's config.json is used
    from PIL import Image
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] >= 2 * 8


def test_train_resumes_from_latest(trained):
    config, workdir, _ = trained
    out = run_cli("train", f"--config={config}", f"--workdir={workdir}", "--config.total_steps=6")
    assert "step 6/6" in out
    logged = [r["step"] for r in read_metrics(workdir) if "loss" in r]
    assert logged == [2, 4, 6]  # continued at 5, not restarted at 1
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps == [4, 6]  # 4 kept by keep_period, 6 is the latest
