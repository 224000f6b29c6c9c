"""Flower never listens beyond localhost without basic auth: `celery -A bday flower` refuses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import celery
import pytest

from bday.broker.app import refuse_open_flower

CELERY = os.path.join(os.path.dirname(sys.executable), "celery")
FLOWER = [CELERY, "-A", "bday", "flower"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (FLOWER, {}),
        (["celery", "-A", "bday", "flower"], {}),
        ([*FLOWER, "--address=0.0.0.0"], {}),
        ([*FLOWER, "--address", "0.0.0.0"], {}),
        ([*FLOWER, "--port=5555"], {"FLOWER_ADDRESS": "0.0.0.0"}),
        ([*FLOWER, "--address=0.0.0.0"], {"FLOWER_ADDRESS": "127.0.0.1"}),
        (FLOWER, {"FLOWER_BASIC_AUTH": ""}),
    ],
    ids=[
        "no-address-no-auth",
        "bare-celery-name",
        "address-equals-all",
        "address-space-all",
        "env-address-all",
        "command-line-beats-env",
        "empty-basic-auth",
    ],
)
def test_flower_open_to_the_network_without_auth_is_refused(argv, environ):
    reason = refuse_open_flower(argv, environ)
    assert reason is not None
    assert "FLOWER_BASIC_AUTH" in reason and "\n" not in reason


def test_the_refusal_names_the_address_it_would_have_used():
    assert "0.0.0.0" in refuse_open_flower([*FLOWER, "--address=0.0.0.0"], {})
    assert "all interfaces" in refuse_open_flower(FLOWER, {})


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        ([*FLOWER, "--address=127.0.0.1"], {}),
        ([*FLOWER, "--address", "localhost"], {}),
        ([*FLOWER, "--address=::1"], {}),
        (FLOWER, {"FLOWER_ADDRESS": "127.0.0.1"}),
        (FLOWER, {"FLOWER_BASIC_AUTH": "admin:s3cret"}),
        ([*FLOWER, "--address=0.0.0.0"], {"FLOWER_BASIC_AUTH": "admin:s3cret"}),
        ([*FLOWER, "--basic-auth=admin:s3cret"], {}),
        ([*FLOWER, "--address=0.0.0.0", "--basic-auth=admin:s3cret"], {}),
    ],
    ids=[
        "address-loopback",
        "address-space-localhost",
        "address-ipv6-loopback",
        "env-address-loopback",
        "env-basic-auth",
        "all-interfaces-with-env-auth",
        "basic-auth-option",
        "all-interfaces-with-auth-option",
    ],
)
def test_flower_on_localhost_or_behind_basic_auth_is_allowed(argv, environ):
    assert refuse_open_flower(argv, environ) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["pytest", "-k", "flower"],
        [sys.executable, "-m", "pytest", "tests/broker/test_flower_guard.py"],
        [CELERY, "-A", "bday", "worker"],
        [CELERY, "-A", "bday", "beat"],
        ["bday", "status"],
        [],
    ],
    ids=["pytest-k-flower", "python-m-pytest", "worker", "beat", "bday-cli", "empty"],
)
def test_commands_other_than_celery_flower_are_never_refused(argv):
    assert refuse_open_flower(argv, {}) is None


def test_python_m_celery_flower_without_auth_is_refused_too():
    argv = [os.path.join(os.path.dirname(celery.__file__), "__main__.py"), "-A", "bday", "flower"]
    assert refuse_open_flower(argv, {}) is not None


def test_the_installed_celery_command_refuses_open_flower_with_one_line_and_exit_2(tmp_path):
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("FLOWER_BASIC_AUTH", "FLOWER_ADDRESS")
    }
    # Run from elsewhere: the guard must hold wherever the operator starts Flower.
    finished = subprocess.run(
        [*FLOWER, f"--port={free_port()}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert finished.returncode == 2
    assert finished.stderr.count("\n") == 1
    assert finished.stderr.startswith("bday: ") and "FLOWER_BASIC_AUTH" in finished.stderr
    assert finished.stdout == ""
