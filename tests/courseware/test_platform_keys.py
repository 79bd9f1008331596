"""Platform keys are trusted as long as the platform's HTTP caching allows (clamped to [60 s, 1 h]), a
withdrawn key stops verifying launches once that time has passed, and a key set that is too big or
malformed is a refusal, never a 500.

The key sets are served over real HTTP by a small server on 127.0.0.1 that each test controls.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core.cache import cache

from courseware.launch import platform_keys
from courseware.launch.platform_keys import PlatformKeyError, jwks_lifetime, platform_key
from tests import lms
from tests.courseware.test_launch_security import assert_refused, claims_for, post, rows, verified_but_unconnected
from tests.courseware.test_launch_security import platform_key as sandbox_key

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "headers,seconds",
    [
        ({"Cache-Control": "public, max-age=600"}, 600),
        ({"Cache-Control": "max-age=5"}, 60),
        ({"Cache-Control": "max-age=86400"}, 3600),
        ({"Cache-Control": "no-store"}, 60),
        ({"Cache-Control": "no-cache, max-age=600"}, 60),
        ({"Cache-Control": 'max-age="120"'}, 120),
        ({}, 300),
        ({"Cache-Control": "max-age=soon"}, 300),
        ({"Expires": formatdate(1_000_000_000 + 900, usegmt=True)}, 900),
        ({"Expires": "not a date"}, 60),
    ],
    ids=["max-age", "below-floor", "above-cap", "no-store", "no-cache", "quoted", "no-header", "bad-max-age",
         "expires", "bad-expires"],
)
def test_how_long_a_key_set_is_trusted(headers, seconds):
    assert jwks_lifetime(headers, now=1_000_000_000) == seconds


class KeySetServer:
    """A platform's JWKS endpoint: serves `body` with `headers`, counting requests."""

    def __init__(self) -> None:
        self.body: bytes = b'{"keys": []}'
        self.headers: dict[str, str] = {}
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.body)))
                for name, value in server.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def publish(self, *keys: dict, **headers: str) -> None:
        self.body = json.dumps({"keys": list(keys)}).encode()
        self.headers = headers


@pytest.fixture
def keyset_server():
    server = KeySetServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def public_jwk(private_key, kid: str) -> dict:
    return {**jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": kid, "alg": "RS256", "use": "sig"}


@pytest.fixture
def registration(keyset_server):
    from lti_tool.models import LtiRegistration

    return LtiRegistration.objects.create(
        name="Keys", issuer="https://lms.example", client_id=f"c-{uuid.uuid4().hex[:6]}", uuid=uuid.uuid4(),
        auth_url="https://lms.example/auth", token_url="https://lms.example/token", keyset_url=keyset_server.url,
    )


@pytest.fixture
def recorded_lifetimes(monkeypatch):
    """The TTLs platform_keys gives the cached key sets (the cache itself stays real)."""
    lifetimes: list[int] = []
    real_set = cache.set

    def set_and_record(key, value, timeout=None, **kwargs):
        if key.startswith("lti:platform-jwks:"):
            lifetimes.append(timeout)
        return real_set(key, value, timeout, **kwargs)

    monkeypatch.setattr(platform_keys.cache, "set", set_and_record)
    return lifetimes


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    "headers,ttl", [({"Cache-Control": "max-age=120"}, 120), ({"Cache-Control": "no-store"}, 60), ({}, 300)]
)
def test_the_lifetime_comes_from_the_platform_response(keyset_server, registration, recorded_lifetimes, headers, ttl):
    keyset_server.publish(public_jwk(RSA_KEY, "k1"), **headers)
    assert platform_key(registration, "k1") is not None
    assert platform_key(registration, "k1") is not None
    assert recorded_lifetimes == [ttl] and keyset_server.hits == 1  # the second use came from the cache


def test_an_unknown_kid_refetches_at_most_once_per_interval(keyset_server, registration):
    keyset_server.publish(public_jwk(RSA_KEY, "k1"), **{"Cache-Control": "max-age=3600"})
    platform_key(registration, "k1")
    for _ in range(3):
        with pytest.raises(PlatformKeyError, match="does not publish"):
            platform_key(registration, "forged-kid")
    assert keyset_server.hits == 2
    # A real rotation: the new kid is found by the (one) refetch.
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cache.delete(f"lti:platform-jwks:{registration.pk}:{registration.keyset_url}:refetch")
    keyset_server.publish(public_jwk(RSA_KEY, "k1"), public_jwk(rotated, "k2"), **{"Cache-Control": "max-age=3600"})
    assert platform_key(registration, "k2") is not None


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"<html>maintenance</html>", "not JSON"),
        (b'{"keys": {"kid": "k1"}}', "not a JWKS"),
        (b"[]", "not a JWKS"),
        (b'{"keys": ["k1", 5, null]}', "does not publish"),
        (json.dumps({"keys": [{"kid": "k1", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}).encode(), "not a usable RSA key"),
        (json.dumps({"keys": [{"kid": "k1", "kty": "RSA", "n": 5, "e": "AQAB"}]}).encode(), "not a usable RSA key"),
        (json.dumps({"keys": [{"kid": "k1"}]}).encode(), "not a usable RSA key"),
        (json.dumps({"keys": [{"kid": "k1", "kty": "oct", "k": "c2VjcmV0"}]}).encode(), "not a usable RSA key"),
        (b'{"keys": [], "padding": "' + b"p" * (300 * 1024) + b'"}', "larger than 256 KB"),
    ],
    ids=["nested", "html", "keys-object", "list", "junk-entries", "ec-key", "n-number", "no-kty", "hmac-secret", "huge"],
)
def test_a_malformed_key_set_is_a_refusal(keyset_server, registration, body, reason):
    keyset_server.body = body
    with pytest.raises(PlatformKeyError, match=reason):
        platform_key(registration, "k1")


def test_an_ec_key_set_served_for_an_rs256_kid(keyset_server, registration):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "k1"}
    keyset_server.publish(jwk)
    with pytest.raises(PlatformKeyError, match="not a usable RSA key"):
        platform_key(registration, "k1")


# --- End to end: launches verified against keys the test's server publishes --------------------------


@pytest.fixture
def connected(live_server, two_institutions, keyset_server):
    connected = lms.connect(live_server.url, two_institutions[0])
    connected.registration.keyset_url = keyset_server.url
    connected.registration.save()
    return connected


def sandbox_jwk(connected) -> dict:
    pem, kid = sandbox_key(connected)
    return public_jwk(serialization.load_pem_private_key(pem.encode() if isinstance(pem, str) else pem, None), kid)


def launch(connected):
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = sandbox_key(connected)
    token = jwt.encode(claims_for(connected, login), pem, algorithm="RS256", headers={"kid": kid})
    return post(http, login, token)


def test_a_withdrawn_key_is_trusted_until_its_max_age_and_no_longer(connected, keyset_server, monkeypatch):
    """Cache-Control: max-age=N keeps the key N seconds; after that the launch signed with it is refused.
    The floor is lowered to 1 s for the test, so N can be 2 s of real time on any cache backend."""
    monkeypatch.setattr(platform_keys, "JWKS_MIN_CACHE_SECONDS", 1)
    keyset_server.publish(sandbox_jwk(connected), **{"Cache-Control": "max-age=2"})
    assert verified_but_unconnected(launch(connected))
    keyset_server.publish(**{"Cache-Control": "max-age=2"})  # the platform withdraws the key
    assert verified_but_unconnected(launch(connected))  # still within its max-age: trusted from the cache
    time.sleep(2.5)
    before = rows()
    response = launch(connected)
    assert_refused(response, before, status=401, reason="does not publish")


def test_a_withdrawn_key_without_caching_headers_is_dropped_after_the_default(connected, keyset_server, monkeypatch):
    monkeypatch.setattr(platform_keys, "JWKS_DEFAULT_CACHE_SECONDS", 1)
    keyset_server.publish(sandbox_jwk(connected))
    assert verified_but_unconnected(launch(connected))
    keyset_server.publish()
    time.sleep(1.5)
    before = rows()
    assert_refused(launch(connected), before, status=401, reason="does not publish")


def test_a_huge_key_set_refuses_the_launch_cleanly(connected, keyset_server):
    keyset_server.body = b'{"keys": [], "padding": "' + b"p" * (300 * 1024) + b'"}'
    before = rows()
    assert_refused(launch(connected), before, status=401, reason="larger than 256 KB")
