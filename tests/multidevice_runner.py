"""Run a tests/multidevice/ check script on 8 simulated CPU devices in its own process."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_on_8_devices(script: str, workdir, timeout: int = 900) -> list[str]:
    """Run tests/multidevice/<script> WORKDIR with XLA_FLAGS=--xla_force_host_platform_device_count=8; return its
    "CHECK ..." / "ALL OK" lines (printed, so that pytest shows the measured numbers); fail on a non-zero exit."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "multidevice", script), str(workdir)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    checks = [line for line in proc.stdout.splitlines() if line.startswith(("CHECK", "ALL"))]
    print("\n".join(checks))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return checks
