"""`bday bench`: capacity figures for this machine, each next to a baseline from the same run.

Everything runs in a sandbox database and vhost with real worker processes and the fake email
service. Figures:

* ceiling: a no-op Celery task on the same broker, pool and concurrency (the baseline);
* delivery: due messages through enqueue -> worker -> fake service -> SENT, at 0 ms and at
  150 ms service latency, as messages/s and as a ratio to the ceiling;
* burst: N messages due at one instant: drain time and lateness percentiles;
* planning: users loaded with COPY at two sizes, time to plan the window, and the ratio;
* enqueue: N due rows claimed and published by one publisher, a confirm per message (the
  baseline) or one confirm wait per batch, and fanned out over the worker processes;
* memory: worker resident memory after a first and a tenfold larger batch.

Figures on a shared machine are noisy: read ratios and medians, not single numbers.

The modules: `figures` runs the figures and turns them into rows (`figures.run`); `harness`
holds the sandbox, the worker processes and each measurement; `seeding` loads users and
messages by COPY; `probes` asks the database how far the messages have got; `procfs` reads
processes' CPU and memory from /proc; `report` holds the rows and prints the table; `enqueue`
measures the enqueue figure.
"""
