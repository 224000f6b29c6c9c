"""`bday fake-email-service`: a local stand-in for the email service, for tests and demos.

It answers `POST /send-email` like the real one (200 = sent), with configurable random 500s,
timeouts (it holds the request longer than any client waits), latency, and a `down` mode
(503 to everything), and a rate limit (`rate_limit` accepted requests per whole second, 429
above it, with `Retry-After: 1` unless `retry_after` is off). Each request is recorded
(arrival time, body, Idempotency-Key, outcome):

* `GET /requests` -> JSON list of every recorded request (`?since=N` skips the first N)
* `GET /stats` -> counts by outcome, successes per key, keys that succeeded more than once
* `POST /control` with JSON `{"down": true, "failure_rate": 0.1, ...}` changes behaviour live
* `POST /reset` forgets the record

Served by aiohttp's low-level server (HTTP/1.1 with keep-alive), so one core serves thousands of
requests a second; it binds to 127.0.0.1 unless told otherwise. Each /send-email request logs
one line on stderr under the command (answer, outcome, masked address, Idempotency-Key, time
taken; never the text, which names the person), so `bday fake-email-service 2>&1 | tee
fake.log` shows what bday sends as it sends it; `--quiet` (bench, demo) logs none, and a test
serving it in-process logs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

from bday.telemetry.logs import mask_emails

log = logging.getLogger("bday.fake_email")
_TIMEOUT_HOLD_S = 120.0


@dataclass
class Behaviour:
    failure_rate: float = 0.0
    timeout_rate: float = 0.0
    latency_ms: float = 0.0
    down: bool = False
    status_when_down: int = 503
    fail_first: int = 0  # the first N calls for each Idempotency-Key answer 500 (tests)
    fixed_status: int = 0  # answer every call with this status, e.g. 422 (tests)
    rate_limit: float = 0.0  # accepted requests per whole second; 429 above (0: no limit)
    retry_after: bool = True  # send `Retry-After: 1` with a 429 (a provider may not)

    def update(self, changes: dict) -> None:
        for name, value in changes.items():
            if name not in self.__dataclass_fields__:
                raise ValueError(f"unknown setting {name!r}")
            kind = type(getattr(self, name))
            setattr(self, name, _flag(value) if kind is bool else kind(value))


def _flag(value: object) -> bool:
    """A bool from JSON or a form: "false"/"0"/"off" are False (bool("false") is not)."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "off", "no")
    return bool(value)


@dataclass
class Record:
    at: float
    key: str | None
    email: str | None
    message: str | None
    outcome: str  # sent | failed | timeout | down | refused | bad_request | throttled
    arrived: float = 0.0  # when the request arrived (Unix seconds), before any latency


@dataclass
class FakeEmailService:
    behaviour: Behaviour = field(default_factory=Behaviour)
    records: list[Record] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)
    calls_per_key: Counter = field(default_factory=Counter)
    accepted_in_second: tuple[int, int] = (0, 0)  # (whole second, requests accepted in it)

    def _over_limit(self, arrived: float) -> bool:
        """Count this request against its whole second; True if that second is full."""
        limit = self.behaviour.rate_limit
        if not limit:
            return False
        second, accepted = self.accepted_in_second
        if int(arrived) != second:
            second, accepted = int(arrived), 0
        if accepted >= limit:
            return True
        self.accepted_in_second = (second, accepted + 1)
        return False

    async def handle_send(
        self, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict] | tuple[int, dict, dict]:
        arrived = time.time()
        key = headers.get("idempotency-key")
        try:
            payload = json.loads(body)
            email, message = payload["email"], payload["message"]
        except (ValueError, KeyError, TypeError):
            self._keep(Record(time.time(), key, None, None, "bad_request"), 400)
            return 400, {"error": "expected JSON {email, message}"}
        if self._over_limit(arrived):
            self._keep(Record(arrived, key, email, message, "throttled", arrived), 429)
            extra = {"Retry-After": "1"} if self.behaviour.retry_after else {}
            return 429, {"error": "rate limit exceeded"}, extra
        self.calls_per_key[key] += 1
        if self.behaviour.latency_ms:
            await asyncio.sleep(self.behaviour.latency_ms / 1000)
        outcome = self._draw(key)
        status, answer = self._answer(outcome, email)
        self._keep(Record(time.time(), key, email, message, outcome, arrived), status)
        if outcome == "timeout":
            await asyncio.sleep(_TIMEOUT_HOLD_S)
        return status, answer

    def _answer(self, outcome: str, email: str) -> tuple[int, dict]:
        if outcome == "timeout":  # answered after any client has given up
            return 504, {"error": "timeout"}
        if outcome == "down":
            return self.behaviour.status_when_down, {"error": "service down"}
        if outcome == "failed":
            return 500, {"error": "random failure"}
        if outcome == "refused":
            return self.behaviour.fixed_status, {"error": "refused"}
        return 200, {"status": "sent", "email": email}

    def _keep(self, record: Record, status: int) -> None:
        """Record a request and, under the command, log it: one line per request."""
        self.records.append(record)
        if log.isEnabledFor(logging.INFO):
            _log_send(status, record)

    def _draw(self, key: str | None) -> str:
        if self.behaviour.down:
            return "down"
        if self.behaviour.fixed_status and self.behaviour.fixed_status != 200:
            return "refused"
        if self.behaviour.fail_first and self.calls_per_key[key] <= self.behaviour.fail_first:
            return "failed"
        roll = self.rng.random()
        if roll < self.behaviour.timeout_rate:
            return "timeout"
        if roll < self.behaviour.timeout_rate + self.behaviour.failure_rate:
            return "failed"
        return "sent"

    def stats(self) -> dict:
        outcomes = Counter(record.outcome for record in self.records)
        sent_keys = Counter(record.key for record in self.records if record.outcome == "sent")
        return {
            "total": len(self.records),
            "outcomes": dict(outcomes),
            "sent_keys": len(sent_keys),
            "duplicate_keys": sorted(key for key, count in sent_keys.items() if count > 1),
            "behaviour": asdict(self.behaviour),
        }

    async def route(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict | list] | tuple[int, dict, dict]:
        path = urlsplit(target).path
        if method == "POST" and path == "/send-email":
            return await self.handle_send(headers, body)
        if method == "GET" and path == "/requests":
            since = int(parse_qs(urlsplit(target).query).get("since", ["0"])[0])
            return 200, [asdict(record) for record in self.records[since:]]
        if method == "GET" and path == "/stats":
            return 200, self.stats()
        if method == "POST" and path == "/control":
            try:
                self.behaviour.update(json.loads(body or b"{}"))
            except (ValueError, TypeError) as exc:
                return 400, {"error": str(exc)}
            return 200, asdict(self.behaviour)
        if method == "POST" and path == "/reset":
            self.records.clear()
            self.calls_per_key.clear()
            self.accepted_in_second = (0, 0)
            return 200, {"reset": True}
        if method == "GET" and path == "/health":
            return 200, {"ok": True}
        return 404, {"error": f"no route {method} {path}"}

    async def handle(self, request: web.BaseRequest) -> web.Response:
        """One HTTP request: route it, answer JSON."""
        body = await request.read() if request.can_read_body else b""
        status, payload, *extra = await self.route(
            request.method, request.path_qs, request.headers, body
        )
        return web.json_response(payload, status=status, headers=extra[0] if extra else None)


def _log_send(status: int, record: Record) -> None:
    """No message text (it names the person) and the address masked: a dev tool's log is
    still a log."""
    held = record.outcome == "timeout"
    log.info(
        "POST /send-email %s %s to %s key %s (%.0f ms)",
        f"held {_TIMEOUT_HOLD_S:.0f} s, then {status}" if held else status,
        record.outcome,
        mask_emails(record.email or "-"),
        record.key or "-",
        (record.at - (record.arrived or record.at)) * 1000,
    )


async def serve(service: FakeEmailService, host: str, port: int, ready=None) -> None:
    """Serve `service` on aiohttp's low-level server (keep-alive, HTTP/1.1) until cancelled."""
    # A stop must not wait for requests the fake is holding on purpose (its timeouts): aiohttp
    # waits up to shutdown_timeout (60 s by default) for open handlers.
    runner = web.ServerRunner(web.Server(service.handle, access_log=None), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    if ready is not None:
        ready(runner.addresses[0][1])
    try:
        await asyncio.Future()  # until the task is cancelled
    finally:
        await runner.cleanup()


def run(host: str = "127.0.0.1", port: int = 8025, quiet: bool = False, **behaviour) -> None:
    """Serve until interrupted (the `bday fake-email-service` command), logging each request
    on stderr unless `quiet`."""
    if not quiet:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # the root handler's format is for errors
    service = FakeEmailService(Behaviour(**behaviour))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(
                service,
                host,
                port,
                ready=lambda p: print(
                    f"fake email service on http://{host}:{p} ({asdict(service.behaviour)})",
                    flush=True,
                ),
            )
        )
