"""How `bday bench` finds the local servers and charges them CPU (no services needed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from bday.devtools.bench import procfs


def test_the_process_listening_on_a_port_is_found_and_a_remote_host_is_not_looked_up():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        assert procfs.listening_pid("127.0.0.1", port) is None  # bound, not yet listening
        listener.listen()
        assert procfs.listening_pid("127.0.0.1", port) == os.getpid()
        assert procfs.listening_pid("db.example.com", port) is None


def test_a_servers_cpu_counts_its_live_children():
    """A PostgreSQL backend is a child of the postmaster: its CPU belongs to the server."""
    spin = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", spin + "\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while procfs.cpu_s(child.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        own, childs = procfs.cpu_s(os.getpid()), procfs.cpu_s(child.pid)
        assert childs >= 0.3  # the child has spun (it sleeps from here on)
        # Read after both: this process's own CPU has only grown since (scanning /proc costs
        # some), so the total holds at least what was read before plus the child's.
        assert procfs.tree_cpu_s(os.getpid()) >= own + childs
    finally:
        child.kill()
        child.wait()
