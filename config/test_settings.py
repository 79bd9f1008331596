"""Test settings: the real settings plus the sandbox LMS and speed knobs only."""
import os

os.environ.setdefault("SANDBOX_LMS", "True")

from .settings import *  # noqa: E402,F401,F403

# live_server threads must not keep connections open, or the test database cannot be dropped.
DATABASES["default"]["CONN_MAX_AGE"] = 0
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Tasks run in-process in tests unless a test starts a real worker (tests/conftest.py's
# `celery_worker` fixture switches the app to the broker for its duration).
CELERY_TASK_ALWAYS_EAGER = os.environ.get("CELERY_TASK_ALWAYS_EAGER_OVERRIDE", "1") == "1"

if "CACHE_URL" not in os.environ and not CELERY_BROKER_URL.startswith("redis://"):
    # A file cache of this test run's own: concurrent runs must not clear each other's entries.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(BASE_DIR / ".cache" / f"tests-{os.getpid()}"),
        }
    }
