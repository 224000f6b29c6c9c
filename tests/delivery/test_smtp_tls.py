"""TLS and AUTH against a real server: aiosmtpd with a certificate made for this run, offering
STARTTLS (and refusing MAIL before it) or speaking TLS from the first byte (smtps://), and
requiring AUTH. The client verifies the server's certificate; a server it cannot verify, or a
wrong password, is a transient error that delivers nothing and never shows the password."""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from bday.delivery.provider import TransientSendError
from bday.delivery.smtp import SmtpSender
from bday.devtools.fake_smtp import FakeSmtp
from tests.delivery.test_smtp import greeting, target

USER = "greetings"
PASSWORD = secrets.token_urlsafe(12)  # made per run: the repository holds no secret

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl"),
    # aiosmtpd's word on AUTH under implicit TLS, which it does not know is TLS
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, valid from now (the real clock: OpenSSL's)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_context(certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, certificate))
    return context


def trusting(certificate) -> ssl.SSLContext:
    """What a deployment gets from its CA bundle: here, one that holds this run's certificate."""
    return ssl.create_default_context(cafile=str(certificate[0]))


def with_login(url: str, password: str = PASSWORD) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{USER}:{password}@{rest}"


@pytest.fixture(params=["starttls", "smtps"])
def secure(request, certificate):
    implicit = request.param == "smtps"
    fake = FakeSmtp(tls=server_context(certificate), implicit_tls=implicit, logins={USER: PASSWORD})
    with fake:
        yield fake


def test_a_greeting_goes_over_tls_after_auth(secure, certificate):
    sender = SmtpSender(target(with_login(secure.url)), tls=trusting(certificate))
    try:
        sender.send_email(greeting())
        sender.send_email(greeting(key="6f1c2c9e-0000-4000-8000-000000000002"))
    finally:
        sender.close()
    received = secure.wait_for(2)
    assert [r.message["To"] for r in received] == ["Ada Lovelace <ada@example.com>"] * 2
    assert secure.logged_in == [USER]  # one AUTH for the session, not one per greeting
    assert {r.session for r in received} == {1}


def test_a_wrong_password_is_transient_delivers_nothing_and_is_never_shown(secure, certificate):
    sender = SmtpSender(target(with_login(secure.url, "wrong-pw")), tls=trusting(certificate))
    with pytest.raises(TransientSendError) as caught:
        sender.send_email(greeting())
    sender.close()
    assert "535" in str(caught.value) or "authentication" in str(caught.value).lower()
    assert "wrong-pw" not in str(caught.value) and secure.received == []
    assert secure.logged_in == []


def test_a_server_whose_certificate_does_not_verify_gets_nothing(secure):
    sender = SmtpSender(target(with_login(secure.url)))  # the default CA bundle only
    with pytest.raises(TransientSendError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
        sender.send_email(greeting())
    sender.close()
    assert secure.received == [] and secure.logged_in == []


def test_mail_before_starttls_is_refused_by_a_server_that_requires_it(certificate):
    """The other side of `?starttls=off`: a server that requires TLS refuses a plain client,
    which therefore never sends a password or a message in the clear."""
    fake = FakeSmtp(tls=server_context(certificate))
    with fake:
        sender = SmtpSender(target(f"smtp://{fake.host}:{fake.port}?starttls=off"))
        with pytest.raises(TransientSendError, match="530|STARTTLS"):
            sender.send_email(greeting())
        sender.close()
        assert fake.received == []
