"""The log lines of a whole run hold no secret: a registration connected, a deep link, launches, grades
recorded and sent over live HTTP to the sandbox LMS (a token fetched, rejected and fetched again),
everything at DEBUG (urllib3's request lines with their URLs included), through the production handler's
filters as JSON lines. Then every secret the run used is looked for in them."""
from __future__ import annotations

import io
import json
import logging
import re

import pytest
from django.conf import settings
from django.utils.module_loading import import_string
from lti_tool.models import Key, LtiRegistration

from config.log_format import JsonFormatter
from gradesync.models import Delivery, DeliveryStatus
from sandbox_lms import api as sandbox
from sandbox_lms.models import SandboxKey, SandboxToken
from tests.gradesync.test_delivery import Classroom

pytestmark = pytest.mark.django_db(transaction=True)

JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")
BEARER = re.compile(r"Bearer\s+(?!\[redacted\])[\w\-.~+/]+", re.I)


@pytest.fixture
def json_lines():
    """Every record of the test, at DEBUG, as the production console handler writes it in JSON
    (its filters from settings.LOGGING: secrets masked, ids bound). Yields the captured text."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    for name in settings.LOGGING["handlers"]["console"]["filters"]:
        handler.addFilter(import_string(settings.LOGGING["filters"][name]["()"])())
    root = logging.getLogger()
    # Every logger down to DEBUG and on to the root (Django's "django" logger is INFO; urllib3's
    # connection pool logs each request's URL at DEBUG); put back as they were afterwards.
    loggers = [root, *(logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger))]
    saved = [(logger, logger.level, logger.propagate, logger.disabled) for logger in loggers]
    for logger in loggers[1:]:
        logger.propagate, logger.disabled = True, False
        if logger.level > logging.DEBUG:
            logger.setLevel(logging.DEBUG)
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for logger, level, propagate, disabled in saved:
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled


def _pem_pieces(pem: str) -> list[str]:
    """The whole PEM and each of its base64 lines: a key logged cut short or with escaped newlines shows too."""
    return [pem.strip(), *(line for line in pem.splitlines() if len(line) >= 40 and "-----" not in line)]


def test_a_whole_run_logs_no_secret_and_its_ids(live_server, two_institutions, json_lines):
    institution = two_institutions[0]
    canvas = Classroom(live_server.url, institution, "canvas")  # connected, a quiz placed by deep linking
    student = canvas.connected.students[0]
    launch = canvas.launch(student)
    canvas.finish(launch, "0.5", minutes_ago=1)
    tokens = set(SandboxToken.objects.values_list("token", flat=True))
    # The LMS forgets its tokens: the next grade is refused 401, a new token is fetched and it lands.
    SandboxToken.objects.all().delete()
    sandbox.forget_caches()
    canvas.finish(launch, "0.9")
    tokens |= set(SandboxToken.objects.values_list("token", flat=True))
    deliveries = list(Delivery.objects.order_by("id"))
    assert [d.status for d in deliveries] == [DeliveryStatus.SENT, DeliveryStatus.SENT]
    assert [x.status_code for x in deliveries[-1].exchanges.order_by("id")] == [401, 200]
    assert len(tokens) >= 3  # the launch's (notice handlers), the first grade's and its replacement

    text = json_lines.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]  # (a) each line is one JSON object
    assert all(isinstance(line, dict) and {"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line["logger"].startswith("urllib3") and line["level"] == "DEBUG" for line in lines)

    # (b) no secret the run used: signing keys (ours and the LMS's), access tokens, bearer headers,
    # signed JWTs (launch id_tokens, client assertions, deep linking responses), Django's SECRET_KEY.
    secrets = {"access token": tokens, "SECRET_KEY": {settings.SECRET_KEY}}
    secrets["tool private key"] = {piece for pem in Key.objects.values_list("private_key", flat=True) for piece in _pem_pieces(pem)}
    secrets["tool private key"] |= {
        piece for pem in LtiRegistration.objects.exclude(private_key="").exclude(private_key__isnull=True)
        .values_list("private_key", flat=True) for piece in _pem_pieces(pem)
    }
    secrets["LMS private key"] = {piece for pem in SandboxKey.objects.values_list("private_pem", flat=True) for piece in _pem_pieces(pem)}
    assert all(secrets.values())
    for kind, values in secrets.items():
        for value in values:
            leaked = [line for line in text.splitlines() if value in line]
            assert not leaked, f"{kind} in the logs: {leaked[0][:300]}"
    assert not BEARER.search(text), BEARER.search(text).group(0)
    assert not JWT.search(text), f"a signed JWT is in the logs: {JWT.search(text).group(0)[:80]}…"

    # (c) the lines of a send carry its delivery and registration; here also the institution, as the grades
    # are recorded outside a transaction, so sent at once inside record_result.
    registration, ids = canvas.connected.registration.pk, {d.pk for d in deliveries}
    sends = [line for line in lines if line["logger"].startswith("urllib3") and "/scores" in line["message"]]
    assert len(sends) >= 3, sends  # the first grade's POST, the second's refused one and its resend
    for line in sends:
        assert line.get("delivery") in ids and line.get("registration") == registration, line
        assert line.get("institution") == institution.pk, line
    # A launch's own lines (here: registering our copy notice handler with Canvas) carry its institution.
    launched = [line for line in lines if line.get("request_id") and "/notice" in line["message"] and "delivery" not in line]
    assert launched and all(line.get("institution") == institution.pk and line.get("registration") == registration for line in launched)
