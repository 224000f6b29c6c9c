"""A private 3-node RabbitMQ cluster on this machine, beside (never touching) its own node.

Each node has its own name (bdayc1@localhost ...), AMQP and distribution ports on loopback,
config file, data and log directories in a temporary directory, and an empty plugins file. The
nodes run as the `rabbitmq` user, so they share the Erlang cookie of the machine's node
(/var/lib/rabbitmq/.erlang.cookie), which is also what `rabbitmqctl` uses when run as root (its
wrapper switches to that user). Nodes 2 and 3 join node 1; `stop()` stops all three and kills
whatever is left.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bday.devtools import sandbox

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "rabbitmqctl"
RUN_AS = "rabbitmq"


def available() -> bool:
    return Path(SERVER).exists() and shutil.which(CTL) is not None


@dataclass
class Node:
    name: str  # bdayc1@localhost
    amqp_port: int
    dist_port: int
    base: Path
    popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}//"

    def env(self) -> dict:
        short = self.name.split("@")[0]
        return {
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.base / f"{short}.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "empty-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / f"{short}.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "HOME": pwd.getpwnam(RUN_AS).pw_dir,
        }

    def start(self) -> None:
        log = (self.base / f"{self.name.split('@')[0]}.out").open("a")
        self.popen = subprocess.Popen(
            ["runuser", "-u", RUN_AS, "--", SERVER],
            env={"PATH": os.environ["PATH"], **self.env()},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def await_startup(self, timeout: float = 120) -> None:
        """Until the node answers and its app runs (it registers with epmd only after a while)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                log = self.base / f"{self.name.split('@')[0]}.out"
                raise RuntimeError(f"{self.name} exited: {log.read_text()[-2000:]}")
            try:
                ctl(self.name, "await_startup", "--timeout", "60", timeout=90)
                return
            except RuntimeError:
                time.sleep(1)
        raise TimeoutError(f"{self.name} did not start within {timeout:.0f} s")

    def os_pid(self) -> int | None:
        """The Erlang VM's pid (from its pid file), if it is running."""
        path = Path(self.env()["RABBITMQ_PID_FILE"])
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def sigkill(self) -> None:
        """Kill the node's VM outright (what a crashed host looks like to the others)."""
        pid = self.os_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        Path(self.env()["RABBITMQ_PID_FILE"]).unlink(missing_ok=True)


def ctl(node: str, *args: str, timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(
        [CTL, "-q", "-n", node, *args], capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl -n {node} {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


@dataclass
class Cluster:
    nodes: list[Node]
    base: Path
    killed: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Every node's URL joined by ';': kombu's (and so Celery's) failover form."""
        return ";".join(node.url for node in self.nodes)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.os_pid()]

    def leader(self, queue: str, vhost: str = "/") -> str:
        """The node leading quorum queue `queue`, asked of any running node."""
        for node in self.running():
            out = ctl(node.name, "list_queues", "-p", vhost, "name", "leader", check=False)
            for line in out.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == queue:
                    return parts[1]
        raise LookupError(f"no leader found for {queue}")

    def members_online(self, queue: str, vhost: str = "/") -> list[str]:
        for node in self.running():
            out = ctl(node.name, "list_queues", "-p", vhost, "name", "online", check=False)
            for line in out.splitlines():
                name, _, rest = line.partition("\t")
                if name == queue:
                    return sorted(rest.strip("[] \t").replace('"', "").replace(",", " ").split())
        return []

    def kill(self, name: str) -> None:
        self.node(name).sigkill()
        self.killed.append(name)

    def restart(self, name: str) -> None:
        """Start a killed node again: it finds its cluster in its own data directory."""
        node = self.node(name)
        node.start()
        node.await_startup()

    def running_nodes(self) -> list[str]:
        out = ctl(self.nodes[0].name, "eval", "rabbit_nodes:all_running().", check=False)
        return sorted(part.strip(" []'\n") for part in out.split(",") if "@" in part)

    def stop(self) -> None:
        for node in self.nodes:
            if node.os_pid():
                ctl(node.name, "stop", timeout=60, check=False)
        for node in self.nodes:
            node.sigkill()  # whatever `stop` left behind
        shutil.rmtree(self.base, ignore_errors=True)


def start(size: int = 3, prefix: str = "bdayc") -> Cluster:
    base = Path(tempfile.mkdtemp(prefix="bday-rabbit-cluster-"))
    nodes = [
        Node(f"{prefix}{i}@localhost", sandbox.free_port(), _dist_port(), base)
        for i in range(1, size + 1)
    ]
    _write_files(base, nodes)
    cluster = Cluster(nodes, base)
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.await_startup()
        for node in nodes[1:]:
            ctl(node.name, "stop_app")
            ctl(node.name, "join_cluster", nodes[0].name)
            ctl(node.name, "start_app")
        _wait(lambda: len(cluster.running_nodes()) == size, 60, "every node running")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _dist_port() -> int:
    # Below 55535: rabbitmqctl derives its own distribution ports from a node's port + 10000.
    while True:
        port = sandbox.free_port()
        if port < 55_000:
            return port


def _write_files(base: Path, nodes: list[Node]) -> None:
    (base / "enabled_plugins").write_text("[].\n")
    (base / "empty-env.conf").write_text("")
    for directory in ("mnesia", "log"):
        (base / directory).mkdir()
    for node in nodes:
        short = node.name.split("@")[0]
        (base / f"{short}.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{node.amqp_port}\n"
            "loopback_users.guest = true\n"
            "cluster_partition_handling = pause_minority\n"
        )
    account = pwd.getpwnam(RUN_AS)
    for path in (base, *base.rglob("*")):
        os.chown(path, account.pw_uid, account.pw_gid)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"rabbit cluster: timed out waiting for {what}")
