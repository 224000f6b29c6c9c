"""Several worker processes on one host each serve their own metrics (the Procfile under
`honcho start -c worker=2`): the second takes the next port instead of serving nothing."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import urllib.request
from pathlib import Path

import pytest

from bday.devtools import sandbox
from tests.harness.stack import wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
HONCHO = str(Path(sandbox.celery_command()[0]).with_name("honcho"))


def test_two_workers_under_honcho_both_serve_metrics(stack, tmp_path):
    base = sandbox.free_port()
    env = {
        "PATH": f"{Path(HONCHO).parent}:{os.environ['PATH']}",
        "WORKER_METRICS_PORT": str(base),
        "WORKER_METRICS_ADDR": "127.0.0.1",
        "QUEUE_CONCURRENCY": "2",
    }
    args = [HONCHO, "-f", str(ROOT / "Procfile"), "-d", str(tmp_path)]
    honcho = sandbox.spawn(
        "honcho", [*args, "start", "-c", "worker=2", "worker"], {**stack.env, **env}, tmp_path
    )
    try:
        ports = wait_until(
            lambda: _served_ports(honcho.output()), 90, "two workers serving metrics"
        )
        bodies = [_scrape(port) for port in ports]
    finally:
        honcho.stop()
        _kill_group(honcho.popen.pid)
    assert len(set(ports)) == 2 and base in ports
    assert all("bday_messages_sent_total" in body for body in bodies)


def test_the_procfile_takes_the_metrics_port_from_metrics_port(stack, tmp_path):
    port = sandbox.free_port()
    env = {"PATH": f"{Path(HONCHO).parent}:{os.environ['PATH']}", "METRICS_PORT": str(port)}
    args = [HONCHO, "-f", str(ROOT / "Procfile"), "-d", str(tmp_path)]
    honcho = sandbox.spawn("honcho", [*args, "start", "metrics"], {**stack.env, **env}, tmp_path)
    try:
        wait_until(
            lambda: f"bday metrics on http://127.0.0.1:{port}/metrics" in honcho.output(),
            60,
            "the metrics exporter on METRICS_PORT",
        )
        body = _scrape(port)
    finally:
        honcho.stop()
        _kill_group(honcho.popen.pid)
    assert "bday_queue_depth" in body


def _served_ports(output: str) -> list[int] | None:
    ports = [int(port) for port in re.findall(r"worker metrics on port (\d+)", output)]
    return ports if len(ports) == 2 else None


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _kill_group(pid: int) -> None:
    # honcho stops its children on SIGTERM; anything left over goes with its group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
