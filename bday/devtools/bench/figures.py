"""The run: which figures `bday bench` measures, in which order, each turned into rows beside
its baseline."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from bday.devtools import sandbox
from bday.devtools.bench.enqueue import enqueue_rows
from bday.devtools.bench.harness import Bench, Sizes
from bday.devtools.bench.probes import OLD_LEFT, SENT_RECENTLY, scalar
from bday.devtools.bench.report import Row, fmt
from bday.devtools.bench.seeding import old_finished


def run(
    quick: bool = False,
    concurrency: int = 64,
    pool: str = "threads",
    repeat: int = 1,
    only: tuple[str, ...] = (),
    processes: int = 1,
) -> list[Row]:
    sandbox.exit_cleanly_on_sigterm()
    sizes = Sizes.quick() if quick else Sizes.full()
    bench = Bench(sizes, concurrency, pool, processes)
    bench.setup()
    wanted = set(only) or {
        "delivery",
        "burst",
        "planning",
        "memory",
        "breaker",
        "retention",
        "enqueue",
    }
    try:
        ceilings = [bench.ceiling(sizes.delivery) for _ in range(repeat)]
        ceiling = statistics.median(ceilings)
        bench.rows.append(
            Row(
                "ceiling: no-op task",
                f"{ceiling:.0f} tasks/s",
                "baseline",
                f"{processes} x {pool} pool, concurrency {concurrency}; runs {fmt(ceilings)}",
            )
        )
        bench.rows.append(
            Row(
                "worker CPU per no-op task",
                f"{statistics.median(bench.cpu_ms['ceiling']):.2f} ms",
                "baseline",
                "Celery's own receive, dispatch and ack (all worker processes, user + system)",
            )
        )
        if "delivery" in wanted:
            _delivery_rows(bench, ceiling, repeat)
        if "burst" in wanted:
            for count in (sizes.burst, sizes.burst_small):
                burst = bench.burst(count)
                bench.rows.append(
                    Row(
                        f"burst: {count} due at one instant",
                        f"drain {burst['drain_s']:.1f} s",
                        f"{count / ceiling:.1f} s at the ceiling",
                        f"lateness p50 {burst['p50']:.2f} s, p95 {burst['p95']:.2f} s, "
                        f"p99 {burst['p99']:.2f} s, min {burst['min']:+.2f} s",
                    )
                )
        if "planning" in wanted:
            small, large = sizes.planning
            small_s, small_rows = bench.planning(small)
            large_s, large_rows = bench.planning(large)
            bench.rows.append(
                Row(
                    f"planning: {small:,} users",
                    f"{small_s:.2f} s",
                    "baseline",
                    f"{small_rows} rows planned",
                )
            )
            bench.rows.append(
                Row(
                    f"planning: {large:,} users",
                    f"{large_s:.2f} s",
                    f"x{large_s / small_s:.2f} of {small:,}",
                    f"{large_rows} rows planned",
                )
            )
            same_s, same_rows = bench.planning(large, due_share=small / large)
            bench.rows.append(
                Row(
                    f"planning: {large:,} users, {small:,}'s occasions",
                    f"{same_s:.2f} s",
                    f"x{same_s / small_s:.2f} of {small:,}",
                    f"{same_rows} rows planned: cost follows occasions, not users",
                )
            )
        if "enqueue" in wanted:
            enqueue_rows(bench, repeat)
        if "breaker" in wanted:
            _breaker_rows(bench, repeat)
        if "retention" in wanted:
            _retention_rows(bench, repeat)
        if "memory" in wanted:
            first, second = sizes.memory
            rss_first, rss_second = bench.memory(first, second)
            bench.rows.append(
                Row(f"memory: worker RSS after {first:,}", f"{rss_first:.0f} MiB", "baseline")
            )
            bench.rows.append(
                Row(
                    f"memory: worker RSS after {first + second:,}",
                    f"{rss_second:.0f} MiB",
                    f"x{rss_second / rss_first:.2f}",
                )
            )
    finally:
        bench.teardown()
    return bench.rows


def _delivery_rows(bench: Bench, ceiling: float, repeat: int) -> None:
    count = bench.sizes.delivery
    smtp: list[float] = []
    for latency in (0, 150):
        results = []
        for _ in range(repeat):  # at 0 ms, HTTP and SMTP in alternation (noise is shared)
            results.append(bench.delivery(count, latency))
            if latency == 0:
                smtp.append(bench.delivery(count, 0, smtp=True)[0])
        rate = statistics.median(r[0] for r in results)
        bench.rows.append(
            Row(
                f"delivery: {count:,} at {latency} ms",
                f"{rate:.0f} msg/s",
                f"x{rate / ceiling:.2f} of ceiling",
                f"runs {fmt([r[0] for r in results])}",
            )
        )
        cpu = statistics.median(bench.cpu_ms[f"delivery {latency:g} 0"])
        noop_cpu = statistics.median(bench.cpu_ms["ceiling"])
        bench.rows.append(
            Row(
                f"worker CPU per greeting at {latency} ms",
                f"{cpu:.2f} ms",
                f"x{cpu / noop_cpu:.1f} of a no-op task",
                "process CPU time over greetings delivered",
            )
        )
        for name in bench.servers:
            spent = statistics.median(bench.cpu_ms[f"delivery {latency:g} 0 {name}"])
            bench.rows.append(
                Row(
                    f"{name} CPU per greeting at {latency} ms",
                    f"{spent:.2f} ms",
                    f"x{spent / cpu:.2f} of the worker's",
                    "the server's processes (capacity model input)",
                )
            )
        if latency == 0:
            _smtp_rows(bench, smtp, rate, cpu)
            enqueue_s = statistics.median(r[1] for r in results)
            bench.rows.append(
                Row(
                    f"enqueue: {count:,} due rows claimed + published",
                    f"{enqueue_s:.2f} s",
                    f"{count / enqueue_s:.0f} rows/s",
                )
            )


def _smtp_rows(bench: Bench, rates: list[float], http_rate: float, http_cpu: float) -> None:
    """Delivery and worker CPU through SMTP (`bday fake-smtp-service`) beside HTTP's."""
    count = bench.sizes.delivery
    rate = statistics.median(rates)
    bench.rows.append(
        Row(
            f"delivery: {count:,} at 0 ms through SMTP",
            f"{rate:.0f} msg/s",
            f"x{rate / http_rate:.2f} of HTTP's",
            f"runs {fmt(rates)}; one session kept per sending thread",
        )
    )
    cpu = statistics.median(bench.cpu_ms["delivery 0 0 smtp"])
    bench.rows.append(
        Row(
            "worker CPU per greeting through SMTP",
            f"{cpu:.2f} ms",
            f"x{cpu / http_cpu:.2f} of HTTP's",
            "building and writing the MIME message, smtplib's dialogue",
        )
    )


def _retention_rows(bench: Bench, repeat: int) -> None:
    """Retention alone, then delivery with and without retention deleting beside it."""
    from bday.scheduling import jobs

    count, rows = bench.sizes.delivery, bench.sizes.retention
    bench.reset()
    old_finished(rows)
    started = time.perf_counter()
    result = jobs.retention_job()
    alone_s = time.perf_counter() - started
    assert scalar(OLD_LEFT) == 0
    bench.rows.append(
        Row(
            f"retention: {rows:,} finished rows deleted, alone",
            f"{alone_s:.1f} s",
            f"{rows / alone_s:,.0f} rows/s",
            f"{len(result['dropped'])} partitions dropped, "
            f"{result['batches']} batches of RETENTION_BATCH",
        )
    )
    took: list[float] = []

    def beside() -> Callable[[], None]:
        old_finished(rows)

        def delete() -> None:
            started = time.perf_counter()
            jobs.retention_job()
            took.append(time.perf_counter() - started)
            assert scalar(OLD_LEFT) == 0

        return delete

    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeat):
        for with_retention in (False, True):
            rate = bench.delivery(count, 0, beside=beside if with_retention else None)[0]
            rates[with_retention].append(rate)
    kept = int(scalar(SENT_RECENTLY))
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    bench.rows.append(
        Row(
            f"delivery: {count:,} at 0 ms",
            f"{off:.0f} msg/s",
            "baseline",
            f"runs {fmt(rates[False])}",
        )
    )
    bench.rows.append(
        Row(
            f"delivery: {count:,} while retention deletes {rows:,}",
            f"{on:.0f} msg/s",
            f"x{on / off:.2f}",
            f"runs {fmt(rates[True])}; retention took {fmt(took)} s; "
            f"this year's {kept:,} SENT rows kept",
        )
    )


def _breaker_rows(bench: Bench, repeat: int) -> None:
    """Delivery with 10% random failures, breaker on and off, in alternation (noise is shared)."""
    count = bench.sizes.delivery
    rates: dict[bool, list[float]] = {True: [], False: []}
    trips = 0
    for _ in range(repeat):
        for enabled in (True, False):
            bench.env["BREAKER_ENABLED"] = "true" if enabled else "false"
            rates[enabled].append(bench.delivery(count, 0, failure_rate=0.10)[0])
            if enabled:
                trips += int(scalar("SELECT coalesce(sum(trips), 0) FROM circuit_breakers"))
    bench.env.pop("BREAKER_ENABLED")
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    label = "10% failures, breaker {} (rate to 99% sent)"
    bench.rows.append(
        Row(label.format("off"), f"{off:.0f} msg/s", "baseline", f"runs {fmt(rates[False])}")
    )
    bench.rows.append(
        Row(
            label.format("on"),
            f"{on:.0f} msg/s",
            f"x{on / off:.2f}",
            f"runs {fmt(rates[True])}; breaker trips: {trips}",
        )
    )
