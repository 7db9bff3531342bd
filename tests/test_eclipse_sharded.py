"""ECLIPSE's contrastive loss on 8 simulated devices (tests/multidevice/check_eclipse.py in a subprocess)."""

from multidevice_runner import run_on_8_devices


def test_contrastive_loss_sharded_equals_one_device(tmp_path):
    checks = run_on_8_devices("check_eclipse.py", tmp_path, timeout=600)
    assert sum("eclipse_contrastive" in c for c in checks) == 1 and "ALL OK" in checks[-1]
