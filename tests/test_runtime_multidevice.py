"""Sharded train step, FSDP memory, bit-exact resume and cross-topology restore on 8 simulated CPU devices.

All checks run in one subprocess (tests/multidevice/check_runtime.py) with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

from multidevice_runner import run_on_8_devices


def test_runtime_on_8_devices(tmp_path):
    names = " ".join(run_on_8_devices("check_runtime.py", tmp_path))
    for name in ("sharded_step mesh={'data': 2, 'fsdp': 4}", "sharded_step mesh={'data': 2, 'tensor': 4}",
                 "fsdp_memory", "frozen_placement", "frozen_unet_sharded", "resume", "restore_4_to_8", "ALL OK"):
        assert name in names, name
