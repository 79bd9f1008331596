"""Test settings: the real settings plus the sandbox LMS and speed knobs only."""
import os

os.environ.setdefault("SANDBOX_LMS", "True")

from .settings import *  # noqa: E402,F401,F403

# live_server threads must not keep connections open, or the test database cannot be dropped.
DATABASES["default"]["CONN_MAX_AGE"] = 0
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tests render pages with DEBUG off and no collectstatic run: plain names (tests/test_static_files.py
# checks the production storage after a real collectstatic).
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}

# Tasks run in-process in tests unless a test starts a real worker (tests/conftest.py's
# `celery_worker` fixture switches the app to the broker for its duration).
CELERY_TASK_ALWAYS_EAGER = os.environ.get("CELERY_TASK_ALWAYS_EAGER_OVERRIDE", "1") == "1"

# pytest-xdist (`make test` runs one worker per core): each worker gets Redis databases of its own, since
# tests clear the cache and start Celery workers; the test database is per worker already (test_…_gw0).
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _XDIST_WORKER.startswith("gw") and _XDIST_WORKER[2:].isdigit():
    import re as _re

    def _own_redis_db(url: str, slot: int) -> str:
        if not url.startswith("redis://"):
            return url
        base = _re.sub(r"/\d*$", "", url)
        return f"{base}/{slot}"

    _n = int(_XDIST_WORKER[2:])
    CELERY_BROKER_URL = _own_redis_db(CELERY_BROKER_URL, 2 + 2 * _n)  # 2, 4, 6…; CI's own run uses 0 and 1
    # Celery reads CELERY_BROKER_URL from the environment before this setting: without this, every test
    # process (and the workers they start, which inherit it) would publish to and consume CI's db 0.
    if CELERY_BROKER_URL.startswith("redis://"):
        os.environ["CELERY_BROKER_URL"] = CELERY_BROKER_URL
    if CACHES["default"].get("BACKEND", "").endswith("RedisCache"):
        CACHES["default"]["LOCATION"] = _own_redis_db(CACHES["default"]["LOCATION"], 3 + 2 * _n)

if "CACHE_URL" not in os.environ and not CELERY_BROKER_URL.startswith("redis://"):
    # A file cache of this test run's own: concurrent runs must not clear each other's entries.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(BASE_DIR / ".cache" / f"tests-{os.getpid()}"),
        }
    }
