"""Log lines in production: one JSON object per line with the ids bound for the request or task, and no secret."""
from __future__ import annotations

import io
import json
import logging

import pytest

from config.log_format import ContextFilter, JsonFormatter, bind
from institutions.redaction import RedactSecrets
from tests.test_deploy_check import _manage, _production

TOKEN = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def _json_logger():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("tests.json-lines")
    logger.handlers, logger.propagate = [handler], False
    return logger, stream


def test_a_line_carries_the_bound_ids_and_no_secret():
    logger, stream = _json_logger()
    with bind(institution=3, registration=5):
        with bind(delivery=9):
            logger.warning("The LMS refused %s", TOKEN)
        logger.info("after the delivery")
    logger.info("outside")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert {k: first[k] for k in ("level", "logger", "institution", "registration", "delivery")} == {
        "level": "WARNING", "logger": "tests.json-lines", "institution": 3, "registration": 5, "delivery": 9}
    assert first["message"].startswith("The LMS refused") and "c2lnbmF0dXJl" not in stream.getvalue()
    assert "delivery" not in second and second["registration"] == 5
    assert not {"institution", "registration", "delivery"} & set(third)


def test_an_exception_is_one_line_with_its_traceback():
    logger, stream = _json_logger()
    try:
        raise ValueError(f"token {TOKEN}")
    except ValueError:
        logger.exception("send failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert "ValueError" in line["exception"] and "c2lnbmF0dXJl" not in line["exception"]


@pytest.mark.django_db
def test_each_request_has_an_id_kept_from_the_proxy_or_made(client):
    kept = client.get("/healthz", HTTP_X_REQUEST_ID="lb-7f3a.2")
    assert kept["X-Request-ID"] == "lb-7f3a.2"
    made = client.get("/healthz", HTTP_X_REQUEST_ID="<script>alert(1)</script>")
    assert len(made["X-Request-ID"]) == 32 and made["X-Request-ID"].isalnum()


def test_production_writes_json_lines_and_make_run_plain_text(tmp_path):
    script = (
        "import logging; from config.log_format import bind\n"
        f"with bind(request_id='r1', registration=12, delivery=34):\n"
        f"    logging.getLogger('gradesync.sender').warning('refused %s', '{TOKEN}')\n"
    )
    production = _manage("shell", "-c", script, env=_production(tmp_path))
    assert production.returncode == 0, production.stderr
    line = json.loads([line for line in production.stderr.splitlines() if line.startswith("{") and "refused" in line][-1])
    assert (line["request_id"], line["registration"], line["delivery"], line["logger"]) == ("r1", 12, 34, "gradesync.sender")
    assert "c2lnbmF0dXJl" not in production.stderr

    demo_env = {**_production(tmp_path), "DEBUG": "True", "BEHIND_TLS_PROXY": "False"}
    demo = _manage("shell", "-c", script, env=demo_env)
    assert demo.returncode == 0, demo.stderr
    plain = [line for line in demo.stderr.splitlines() if "refused" in line][-1]
    assert not plain.startswith("{") and "WARNING gradesync.sender refused" in plain
