"""Production settings behind a TLS proxy: `manage.py check --deploy` is clean, https is enforced.

Run in a subprocess with the environment of a production start (DEBUG off, a real SECRET_KEY,
BEHIND_TLS_PROXY on), as `config/settings.py` reads it at import.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Deploy warnings silenced on purpose, each explained in config/settings.py and .env.example.
EXPLAINED = {
    "security.W005": "HSTS includeSubDomains off by default: the parent domain's owner decides",
    "security.W008": "behind the TLS proxy, the proxy redirects http to https",
    "security.W021": "HSTS preload: near irreversible, for the whole domain",
    # On SQLite only (this test's database; production runs PostgreSQL, where it is not silenced).
    "models.W040": "SQLite has no covering indexes: the INCLUDE columns only spare PostgreSQL a table read",
}


def _production(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A production start's environment; its database and cache in tmp_path (nothing here touches them)."""
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", "CELERY_BROKER_URL"}}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        CACHE_URL=f"filecache://{tmp_path / 'cache'}",
        DEBUG="False",
        SECRET_KEY=secrets.token_urlsafe(50),
        BEHIND_TLS_PROXY="True",
        ALLOWED_HOSTS="grades.example.com",
        SANDBOX_LMS="False",
        **extra,
    )
    return env


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_behind_a_tls_proxy(tmp_path):
    env = _production(tmp_path)
    check = _manage("check", "--deploy", "--fail-level", "WARNING", env=env)

    assert check.returncode == 0, check.stdout + check.stderr
    assert "System check identified no issues" in check.stdout, check.stdout + check.stderr
    silenced = _manage("shell", "-c", "import json; from django.conf import settings; print(json.dumps(settings.SILENCED_SYSTEM_CHECKS))",
                       env=env)
    assert silenced.returncode == 0, silenced.stderr
    assert set(json.loads(silenced.stdout.strip().splitlines()[-1])) <= set(EXPLAINED)


def test_the_deploy_check_still_catches_a_missing_https_setting(tmp_path):
    """The silenced warnings hide nothing else: turning HSTS off is reported."""
    check = _manage("check", "--deploy", "--fail-level", "WARNING", env=_production(tmp_path, SECURE_HSTS_SECONDS="0"))

    assert check.returncode != 0 and "security.W004" in check.stdout + check.stderr


def test_behind_a_tls_proxy_cookies_are_secure_and_https_is_strict(tmp_path):
    script = (
        "import json; from django.conf import settings; from django.test import Client; "
        "r = Client().get('/no-such-page/', HTTP_X_FORWARDED_PROTO='https'); "
        "print(json.dumps({'hsts': r.headers.get('Strict-Transport-Security', ''), "
        "'session_secure': settings.SESSION_COOKIE_SECURE, 'csrf_secure': settings.CSRF_COOKIE_SECURE}))"
    )
    shown = _manage("shell", "-c", script, env=_production(tmp_path))

    assert shown.returncode == 0, shown.stderr
    facts = json.loads(shown.stdout.strip().splitlines()[-1])
    assert facts == {"hsts": "max-age=31536000", "session_secure": True, "csrf_secure": True}
