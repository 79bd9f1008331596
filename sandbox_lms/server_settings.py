"""Settings for running the sandbox LMS as its own server process (benchmarks, load tests).

The project's settings with the sandbox on, no session/CSRF/auth middleware (its service
endpoints need none) and only the sandbox's urls. See `sandbox_lms.api` for the command line.
"""
import os

os.environ.setdefault("SANDBOX_LMS", "True")

from config.settings import *  # noqa: E402,F401,F403
from config.settings import DATABASES, INSTALLED_APPS  # noqa: E402

if "sandbox_lms" not in INSTALLED_APPS:
    INSTALLED_APPS.append("sandbox_lms")
DEBUG = False
ALLOWED_HOSTS = ["*"]
MIDDLEWARE = []
ROOT_URLCONF = "sandbox_lms.server_urls"
# Keep database connections across requests (the SQLite default of 0 is for the embedded demo).
if DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = None
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
