"""The benchmark harness is an instrument: it must see load that is there, time what it is given, and refuse
to call too few rounds a result (benchmarks/harness.py, issue #12)."""

import argparse
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import harness  # noqa: E402


def _args(repeats):
    parser = argparse.ArgumentParser()
    harness.add_arguments(parser)
    return parser, parser.parse_args(["--repeats", str(repeats)])


def test_alternate_times_each_side_and_rotates_the_order():
    order = []

    def side(name, seconds):
        def fn():
            order.append(name)
            time.sleep(seconds)
        return fn

    times = harness.alternate({"a": side("a", 0.02), "b": side("b", 0.06)}, repeats=4, warmup=1)
    assert [len(times["a"]), len(times["b"])] == [4, 4]
    assert 0.02 <= harness.median(times["a"]) < 0.05 and 0.06 <= harness.median(times["b"]) < 0.09
    assert order[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # after the warm-up round, rotating


def test_a_busy_neighbour_is_seen_and_marks_the_rows():
    """The cheat: another process burns a core while we "measure"."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        check = harness.MachineCheck(wait_s=0, verbose=False)
        watch_rounds = harness.alternate({"x": lambda: time.sleep(0.5)}, repeats=3, check=check)
    finally:
        burner.kill()
        burner.wait()
    assert check.start_share > harness.OTHER_LOAD_MAX
    assert check.loaded and "other processes used" in check.notes
    _, args = _args(3)
    report = harness.Report("t", args, "cmd", check)
    row = report.time_row("x", watch_rounds["x"])
    assert report.status(row).startswith("LOADED")


def test_own_work_and_own_children_are_not_load():
    check = harness.MachineCheck(wait_s=5, verbose=False)
    busy = lambda: subprocess.run([sys.executable, "-c", "sum(range(10_000_000))"], check=True)  # noqa: E731
    harness.alternate({"x": busy, "y": lambda: sum(range(10_000_000))}, repeats=3, check=check)
    if check.start_share > harness.OTHER_LOAD_MAX:
        pytest.skip("the machine was busy before the test started")
    assert check.round_shares, "no window of a second or more was recorded"
    # the child burns about a third of the machine per window: counted as "other", the median would be over 10%
    assert harness.median(check.round_shares) <= harness.OTHER_LOAD_MAX, check.summary()


def test_too_few_rounds_are_not_a_result_and_ratios_are_speeds():
    _, args = _args(2)
    report = harness.Report("t", args, "cmd", None)
    row = report.time_row("x", [2.0, 2.0], [1.0, 1.0], per=8, per_unit="img/s", target=1.2)
    assert report.status(row).startswith("not a result")
    assert row["ratio"] == pytest.approx(0.5)  # JAX twice as slow: half PyTorch's speed
    assert "not met" in harness.fmt_ratio(row) and "4.0 img/s" in harness.fmt_jax(row)


def test_command_line_lists_only_changed_options():
    parser, args = _args(7)
    assert harness.command_line("python benchmarks/x.py", parser, args) == "python benchmarks/x.py --repeats 7"
