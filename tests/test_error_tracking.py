"""Errors reach the error tracker when SENTRY_DSN is set, with no secret in them, and nothing happens
when it is not. A real Sentry client posts to a small HTTP receiver on 127.0.0.1 (no Sentry server here)."""
from __future__ import annotations

import gzip
import http.server
import json
import threading

from tests.test_deploy_check import _manage, _production

TOKEN = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
SCRIPT = f"""
import json, sentry_sdk
from celery import current_app
client = sentry_sdk.get_client()
print(json.dumps({{"active": client.is_active(), "integrations": sorted(getattr(client, "integrations", {{}}))}}))
if client.is_active():
    try:
        raise RuntimeError("the LMS refused {TOKEN}")
    except RuntimeError:
        sentry_sdk.capture_exception()
    sentry_sdk.flush(5)
"""


class _Receiver(http.server.BaseHTTPRequestHandler):
    envelopes: list[bytes] = []

    def do_POST(self):  # noqa: N802 — http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        _Receiver.envelopes.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_error_is_sent_to_sentry_without_secrets(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.envelopes.clear()
    try:
        env = _production(tmp_path, SENTRY_DSN=f"http://publickey@127.0.0.1:{server.server_port}/1")
        shown = _manage("shell", "-c", SCRIPT, env=env)
    finally:
        server.shutdown()
    assert shown.returncode == 0, shown.stdout + shown.stderr
    facts = json.loads(next(line for line in shown.stdout.splitlines() if line.startswith("{")))
    assert facts["active"] is True and {"django", "celery"} <= set(facts["integrations"])
    sent = b"".join(_Receiver.envelopes).decode()
    assert "RuntimeError" in sent and "the LMS refused" in sent
    assert "c2lnbmF0dXJl" not in sent and "eyJzdWIiOiJ4In0" not in sent  # the token was masked


def test_without_a_dsn_nothing_is_loaded_or_sent(tmp_path):
    shown = _manage("shell", "-c", SCRIPT, env=_production(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(next(line for line in shown.stdout.splitlines() if line.startswith("{")))["active"] is False
