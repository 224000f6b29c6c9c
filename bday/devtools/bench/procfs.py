"""CPU and memory of processes, read from /proc: the worker processes, and PostgreSQL's and
RabbitMQ's servers where this machine runs them (Linux only, as the bench is)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime of `pid` from /proc (a prefork pool's children count)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` (with its exited children) and of its live children: a server
    whose work runs in child processes (PostgreSQL's backends, RabbitMQ's port programs)."""
    total = cpu_s(pid)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                status = (proc / "status").read_text()
                if f"\nPPid:\t{pid}\n" in status:
                    total += cpu_s(int(proc.name))
            except (OSError, ValueError):
                continue  # gone meanwhile
    return total


def listening_pid(host: str, port: int) -> int | None:
    """The local process listening on TCP `port`, or None (a remote host, or its file
    descriptors are not ours to read): found through /proc/net/tcp and /proc/*/fd."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                sockets.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in sockets for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


def servers() -> dict[str, int]:
    """PostgreSQL's and RabbitMQ's server processes, where this machine runs them."""
    from urllib.parse import urlsplit

    from bday.broker.urls import node_urls
    from bday.config import get_settings

    settings = get_settings()
    found = {}
    for name, url, default_port in (
        ("PostgreSQL", settings.database_url, 5432),
        ("RabbitMQ", node_urls(settings.rabbitmq_url)[0], 5672),
    ):
        parts = urlsplit(url)
        pid = listening_pid(parts.hostname or "", parts.port or default_port)
        if pid is not None:
            found[name] = pid
    return found


def servers_cpu_s(pids: dict[str, int]) -> dict[str, float]:
    return {name: tree_cpu_s(pid) for name, pid in pids.items()}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
