"""Static files in production: after the release's collectstatic, the web process itself serves the
admin's CSS (WhiteNoise) with DEBUG off — content-hashed names, gzip, cached for good.

Run in subprocesses with a production start's environment (config/settings.py reads it at import).
"""
from __future__ import annotations

import json

from tests.test_deploy_check import _manage, _production

SERVE = """
import json
from django.templatetags.static import static
from django.test import Client

url = static("admin/css/base.css")
client = Client()
hashed = client.get(url, HTTP_ACCEPT_ENCODING="gzip", HTTP_X_FORWARDED_PROTO="https", HTTP_HOST="grades.example.com")
plain = client.get("/static/admin/css/base.css", HTTP_X_FORWARDED_PROTO="https", HTTP_HOST="grades.example.com")
missing = client.get("/static/admin/css/no-such.css", HTTP_X_FORWARDED_PROTO="https", HTTP_HOST="grades.example.com")
print(json.dumps({
    "url": url,
    "status": hashed.status_code,
    "type": hashed.headers.get("Content-Type", ""),
    "encoding": hashed.headers.get("Content-Encoding", ""),
    "cache": hashed.headers.get("Cache-Control", ""),
    "plain_status": plain.status_code,
    "plain_cache": plain.headers.get("Cache-Control", ""),
    "missing_status": missing.status_code,
}))
"""


def test_the_admin_css_is_served_by_the_web_process_with_debug_off(tmp_path):
    env = _production(tmp_path, STATIC_ROOT=str(tmp_path / "static"))
    collected = _manage("collectstatic", "--noinput", "--verbosity", "0", env=env)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    manifest = json.loads((tmp_path / "static" / "staticfiles.json").read_text())
    assert manifest["paths"]["admin/css/base.css"].startswith("admin/css/base.")

    shown = _manage("shell", "-c", SERVE, env=env)

    assert shown.returncode == 0, shown.stdout + shown.stderr
    facts = json.loads(shown.stdout.strip().splitlines()[-1])
    # Pages link the content-hashed name, which WhiteNoise serves gzipped and cacheable for good.
    assert facts["url"] == "/static/" + manifest["paths"]["admin/css/base.css"]
    assert facts["status"] == 200 and facts["type"].startswith("text/css")
    assert facts["encoding"] == "gzip"
    assert "max-age=315360000" in facts["cache"] and "immutable" in facts["cache"]
    # The plain name still answers (for anything that links it), but is not cached for good.
    assert facts["plain_status"] == 200 and "immutable" not in facts["plain_cache"]
    assert facts["missing_status"] == 404
