"""Sharded train step, FSDP memory, bit-exact resume and cross-topology restore on 8 simulated CPU devices.

All checks run in one subprocess (tests/multidevice/check_runtime.py) with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_runtime_on_8_devices(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "multidevice", "check_runtime.py"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=900)
    checks = [line for line in proc.stdout.splitlines() if line.startswith(("CHECK", "ALL"))]
    print("\n".join(checks))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    names = " ".join(checks)
    for name in ("sharded_step mesh={'data': 2, 'fsdp': 4}", "sharded_step mesh={'data': 2, 'tensor': 4}",
                 "fsdp_memory", "frozen_placement", "frozen_unet_sharded", "resume", "restore_4_to_8", "ALL OK"):
        assert name in names, name
