"""Where a worker's CPU goes while it delivers greetings: py-spy samples, summarised.

    pip install py-spy
    python -m bday.devtools.profile [--greetings 20000] [--seconds 25]

Starts the benchmark's sandbox and one worker (threads pool, concurrency 64), waits for its
start-up plan, then samples only the thread holding the GIL (`py-spy record --gil`), so the
shares are shares of the worker's Python CPU, not of time spent waiting. Prints the worker CPU
per greeting over the sampled interval and the frames with the largest inclusive share.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bday.devtools.bench import harness, probes, seeding

# Frames every sample shares (thread start-up, Celery's trace wrapper, the worker's CLI).
_COMMON = re.compile(
    r"^(Thread|_worker|_WorkItem|apply_target|fast_trace|build_tracer|_install|thread \(|<module>"
    r"|main \(|Command|Group|Context|pass_context|handle_preload|worker \(celery|WorkController"
    r"|Blueprint|StartStop|Consumer.start|Evloop)"
)


def summarise(raw: str, top: int = 40) -> list[tuple[float, str]]:
    """(inclusive share %, frame) for py-spy's raw (collapsed) output, largest first."""
    total, inclusive = 0, collections.Counter[str]()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for frame in {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")}:
            inclusive[frame] += int(count)
    rows = [(100 * n / total, f) for f, n in inclusive.most_common() if not _COMMON.match(f)]
    return rows[:top]


def _path() -> str:
    """PATH with this interpreter's bin directory first (py-spy installed into the venv)."""
    import os

    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--greetings", type=int, default=20_000)
    parser.add_argument("--seconds", type=int, default=25)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy", path=_path()) or sys.exit(
        "bday: py-spy is not installed (pip install py-spy)"
    )
    bench = harness.Bench(harness.Sizes.quick(), 64, "threads", 1)
    bench.setup()
    try:
        raw, cpu_ms = _sample(bench, py_spy, args.greetings, args.seconds)
    finally:
        bench.teardown()
    print(f"worker CPU per greeting while sampled: {cpu_ms:.2f} ms (py-spy adds a little)")
    for share, frame in summarise(raw):
        print(f"{share:5.1f}%  {frame[:120]}")


def _sample(bench: harness.Bench, py_spy: str, greetings: int, seconds: int) -> tuple[str, float]:
    from bday.scheduling import jobs

    bench.reset()
    bench.control(latency_ms=0, failure_rate=0, down=False)
    seeding.insert_due(greetings, datetime.now(UTC) - timedelta(seconds=1))
    jobs.enqueue_job()
    spawned = time.time()
    worker = bench.worker("profile")
    cpu_before, sent_before = harness.after_startup_plan(worker, spawned)
    out = Path(tempfile.mkdtemp(prefix="bday-profile-")) / "stacks.txt"
    pid = str(worker.processes[0].popen.pid)
    command = [py_spy, "record", "-p", pid, "-d", str(seconds), "-r", "200", "-f", "raw"]
    subprocess.run(
        [*command, "-o", str(out), "--nonblocking", "--gil"], check=True, capture_output=True
    )
    sent = int(probes.scalar("SELECT count(*) FROM messages WHERE status = 'SENT'")) - sent_before
    cpu_ms = (worker.cpu_s() - cpu_before) / max(1, sent) * 1000
    worker.stop()
    return out.read_text(), cpu_ms


if __name__ == "__main__":
    main()
