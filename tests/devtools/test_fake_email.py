"""`bday fake-email-service` behaves like a real HTTP API: keep-alive, 429 with Retry-After above
its rate, failures on demand, a control API, and one log line per request with the address
masked. Served for real on a loopback port (aiohttp), spoken to with httpx."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import httpx
import time_machine

from bday.devtools import sandbox
from bday.devtools.fake_email import Behaviour, FakeEmailService, serve


def _talk(service: FakeEmailService, conversation) -> None:
    """Serve `service` on a free port and run `conversation(client)` against it."""

    async def scenario() -> None:
        port = sandbox.free_port()
        ready = asyncio.Event()
        server = asyncio.create_task(serve(service, "127.0.0.1", port, ready=lambda _: ready.set()))
        await asyncio.wait_for(ready.wait(), 10)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                await conversation(client)
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)

    asyncio.run(scenario())


def _send(client: httpx.AsyncClient, key: str, email: str = "ada@example.com"):
    return client.post(
        "/send-email", json={"email": email, "message": "hi"}, headers={"Idempotency-Key": key}
    )


def test_requests_share_one_kept_alive_connection_and_are_recorded():
    service = FakeEmailService()
    peers = set()

    async def conversation(client):
        for index in range(5):
            answer = await _send(client, f"k{index}")
            assert answer.status_code == 200 and answer.json()["status"] == "sent"
            peers.add(answer.extensions["network_stream"].get_extra_info("sockname"))

    _talk(service, conversation)
    assert len(peers) == 1  # one connection served all five
    assert [record.key for record in service.records] == [f"k{i}" for i in range(5)]


def test_above_the_rate_limit_it_answers_429_with_retry_after_and_without_when_told():
    service = FakeEmailService(Behaviour(rate_limit=2))

    async def conversation(client):
        answers = [await _send(client, f"k{index}") for index in range(3)]
        assert [answer.status_code for answer in answers] == [200, 200, 429]
        assert answers[2].headers["retry-after"] == "1"
        await client.post("/control", json={"retry_after": False})
        refused = await _send(client, "k3")
        assert refused.status_code == 429 and "retry-after" not in refused.headers

    with time_machine.travel(datetime(2027, 1, 1, 12, tzinfo=UTC), tick=False):  # one second
        _talk(service, conversation)


def test_control_switches_failures_live_and_bad_input_is_a_400():
    service = FakeEmailService()

    async def conversation(client):
        assert (await client.post("/control", json={"down": True})).status_code == 200
        assert (await _send(client, "a")).status_code == 503
        await client.post("/control", json={"down": False, "fixed_status": 422})
        assert (await _send(client, "b")).status_code == 422
        assert (await client.post("/control", json={"nope": 1})).status_code == 400
        bad = await client.post("/send-email", content=b"{not json")
        assert bad.status_code == 400
        assert (await client.get("/stats")).json()["outcomes"] == {
            "down": 1,
            "refused": 1,
            "bad_request": 1,
        }
        assert (await client.get("/nowhere")).status_code == 404

    _talk(service, conversation)


def test_each_send_logs_one_line_with_its_outcome_and_the_address_masked(caplog):
    service = FakeEmailService()

    async def conversation(client):
        await _send(client, "key-1", "grace.hopper@example.com")

    with caplog.at_level(logging.INFO, logger="bday.fake_email"):
        _talk(service, conversation)
    lines = [r.getMessage() for r in caplog.records if r.name == "bday.fake_email"]
    [line] = lines
    assert line.startswith("POST /send-email 200 sent to g***@example.com key key-1 (")
