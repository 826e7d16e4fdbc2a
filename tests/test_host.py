"""How the demo decides torch's threads' waiting: the cores' load read from /proc/stat."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from instructkit import cli, demo, host

# /proc/stat's first numbers: user nice system idle iowait irq softirq steal guest guest_nice
IDLE_SECOND = ([0, 0, 0, 200, 0, 0, 0, 0, 0, 0], 2)


def after(user: int, idle: int, iowait: int = 0, steal: int = 0) -> tuple[list[int], int]:
    return [user, 0, 0, 200 + idle, iowait, 0, 0, steal, 0, 0], 2


def test_busy_cores_counts_all_but_idle_and_iowait():
    assert host.busy_cores(IDLE_SECOND, after(user=0, idle=200)) == 0.0
    assert host.busy_cores(IDLE_SECOND, after(user=100, idle=100)) == 1.0  # one of two cores
    assert host.busy_cores(IDLE_SECOND, after(user=200, idle=0)) == 2.0
    assert host.busy_cores(IDLE_SECOND, after(user=0, idle=100, iowait=100)) == 0.0
    assert host.busy_cores(IDLE_SECOND, after(user=50, idle=100, steal=50)) == 1.0
    assert host.busy_cores(IDLE_SECOND, IDLE_SECOND) == 0.0  # no time passed


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="/proc/stat is Linux's")
def test_a_process_spinning_on_a_core_is_seen():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert host.cores_in_use(interval_s=0.5) >= host.BUSY_CORES
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.parametrize(
    "busy,expected", [(0.0, None), (0.2, None), (1.0, "PASSIVE"), (None, "PASSIVE")]
)
def test_demo_threads_wait_passively_only_when_a_core_is_taken(
    monkeypatch, tmp_path, busy, expected
):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(host, "cores_in_use", lambda: busy)
    monkeypatch.setattr(demo, "run_demo", lambda out, **kwargs: demo.DemoResult(out, {}, {}, 0, ""))
    assert cli.main(["demo", "--quiet", "--out", str(tmp_path / "demo")]) == 0
    assert os.environ.get("OMP_WAIT_POLICY") == expected


def test_a_users_own_wait_policy_wins(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setattr(host, "cores_in_use", lambda: 2.0)
    host.wait_passively_if_busy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
