"""Shared pytest setup: print the numbers that parity tests measure, even under `pytest -q`."""


def pytest_terminal_summary(terminalreporter):
    lines = []
    for report in terminalreporter.stats.get("passed", []):
        if report.when != "call":
            continue
        out = report.capstdout.strip()
        if out:
            lines.append(f"{report.nodeid}\n    " + out.replace("\n", "\n    "))
    if lines:
        terminalreporter.section("measured numbers (stdout of passed tests)")
        for line in lines:
            terminalreporter.write_line(line)
