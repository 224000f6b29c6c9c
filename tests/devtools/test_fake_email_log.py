"""`bday fake-email-service` logs one line per request, the address masked, so a newcomer can
watch what bday sends; `--quiet` (the bench's) logs none."""

from __future__ import annotations

import httpx
import pytest

from bday.devtools import sandbox


def _serve(tmp_path, *extra: str) -> tuple[sandbox.Process, str]:
    port = sandbox.free_port()
    args = sandbox.bday_command("fake-email-service", "--port", str(port), *extra)
    process = sandbox.spawn("fake", args, {}, tmp_path)
    sandbox.wait_ready(process, "fake email service on")
    return process, f"http://127.0.0.1:{port}"


def _send(url: str, key: str, email: str = "ada.lovelace@example.com") -> int:
    body = {"email": email, "message": "Hey, Ada Lovelace it's your birthday"}
    return httpx.post(f"{url}/send-email", json=body, headers={"Idempotency-Key": key}).status_code


@pytest.mark.timeout(60)
def test_each_request_is_one_line_with_the_address_masked(tmp_path):
    process, url = _serve(tmp_path)
    try:
        assert _send(url, "key-1") == 200
        httpx.post(f"{url}/control", json={"fixed_status": 400})
        assert _send(url, "key-2") == 400
        assert httpx.post(f"{url}/send-email", content=b"nope").status_code == 400
        sandbox.wait_for(lambda: process.output().count("POST /send-email") == 3, 10, "3 lines")
    finally:
        process.stop()
    lines = [line for line in process.output().splitlines() if "POST /send-email" in line]
    assert "POST /send-email 200 sent to a***@example.com key key-1 (" in lines[0]
    assert "POST /send-email 400 refused to a***@example.com key key-2 (" in lines[1]
    assert "POST /send-email 400 bad_request to - key - (" in lines[2]
    output = process.output()
    assert "ada.lovelace@" not in output and "Lovelace" not in output  # no address, no text


@pytest.mark.timeout(60)
def test_quiet_logs_no_request(tmp_path):
    process, url = _serve(tmp_path, "--quiet")
    try:
        assert _send(url, "key-1") == 200
        assert httpx.get(f"{url}/requests").json()[0]["key"] == "key-1"  # still recorded
    finally:
        process.stop()
    assert "POST /send-email" not in process.output()
