"""ECLIPSE's contrastive loss on 8 simulated devices (tests/multidevice/check_eclipse.py in a subprocess)."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_contrastive_loss_sharded_equals_one_device(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "multidevice", "check_eclipse.py"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    checks = [line for line in proc.stdout.splitlines() if line.startswith(("CHECK", "ALL"))]
    print("\n".join(checks))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert sum("eclipse_contrastive" in c for c in checks) == 2 and "ALL OK" in checks[-1]
