"""CPU seconds per test, the test process and every process it started (servers, decoders, workers) together.

`pytest -p tests.cpu_report tests/test_x.py` lists the tests by CPU at the end. On a shared machine wall-clock
durations move with the load; CPU seconds barely do, so this is how to see what a test costs (docs/testing.md).
A shared server's start-up is charged to the first test that asked for it. Linux only (/proc).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_TICK = os.sysconf("SC_CLK_TCK")
_spent: dict[str, float] = {}


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU, CPU of its waited-for children) of a live process, in seconds."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK, (int(fields[13]) + int(fields[14])) / _TICK


def tree_cpu(root: int | None = None) -> float:
    """CPU seconds used so far by `root` (this process) and all its descendants, living or reaped."""
    root = root or os.getpid()
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = stat
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1] + stats[pid][2]
            todo += children.get(pid, [])
    return total


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    before = tree_cpu()
    yield
    _spent[item.nodeid] = tree_cpu() - before


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.section("CPU seconds per test (this process and its children)")
    for nodeid, seconds in sorted(_spent.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f}  {nodeid}")
    by_file: dict[str, float] = {}
    for nodeid, seconds in _spent.items():
        by_file[nodeid.split("::")[0]] = by_file.get(nodeid.split("::")[0], 0.0) + seconds
    terminalreporter.write_line("by file:")
    for path, seconds in sorted(by_file.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f}  {path}")
    terminalreporter.write_line(f"{sum(_spent.values()):8.1f}  in all (the session's end, shared servers' exit, "
                                f"is not in any test)")
