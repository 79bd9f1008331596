"""All settings, read from the environment with embedded defaults that run on a bare machine.

Every variable is documented in `.env.example`. Production differs from `make run` only
by environment variables (DATABASE_URL, CELERY_BROKER_URL, CACHE_URL, SECRET_KEY, DEBUG...).
"""
from datetime import timedelta
from pathlib import Path
import re
import secrets

import environ
from django.core.exceptions import ImproperlyConfigured
from csp.constants import NONCE as CSP_NONCE, NONE as CSP_NONE, SELF as CSP_SELF, UNSAFE_INLINE as CSP_UNSAFE_INLINE
from config import redis_sentinel

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=True)


def _development_secret_key() -> str:
    """A key generated once per checkout, so sessions survive restarts of `make run`."""
    path = BASE_DIR / ".cache" / "development-secret-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


# Outside DEBUG a missing SECRET_KEY is an error at start-up, never a silent default.
SECRET_KEY = env("SECRET_KEY") if not DEBUG else env("SECRET_KEY", default=None) or _development_secret_key()
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# The sandbox LMS is a test platform: mounted only when asked for (make run and the tests).
SANDBOX_LMS = env.bool("SANDBOX_LMS", default=False)

INSTALLED_APPS = [
    # The admin, with staff.sites.StaffAdminSite as admin.site (second factor before any page).
    "staff.apps.StaffAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",  # single-use backup codes, issued at enrolment
    "axes",
    "lti_tool",
    "institutions",
    "gradesync",
    "courseware",
    "staff.apps.StaffConfig",  # staff's own preferences (time zone)
]
if SANDBOX_LMS:
    INSTALLED_APPS.append("sandbox_lms")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files from the web process itself (gunicorn has no static server): compressed, with
    # content-hashed names cached for a year. Right after SecurityMiddleware, as WhiteNoise asks.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # The request's id (X-Request-ID, kept or made) on its log lines and in the answer.
    "config.log_format.RequestIdMiddleware",
    # Content-Security-Policy on every response (CONTENT_SECURITY_POLICY below; framed pages: courseware.framing).
    "csp.middleware.CSPMiddleware",
    # First, so that on the way out it sees the cookies the session and CSRF middleware set.
    "courseware.middleware.FramedCookiesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "staff.middleware.StaffIdleTimeoutMiddleware",
    # Staff see times in their own zone (staff.time_zones: chosen, else the browser's, else TIME_ZONE).
    "staff.middleware.StaffTimeZoneMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a locked-out sign-in into the lockout page (staff.views.locked_out).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "config.wsgi.application"

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Behind PgBouncer in transaction pooling (DATABASE_POOLING=transaction): a connection is the server's
# only for one transaction, so nothing may outlive one. Server-side cursors (QuerySet.iterator) do;
# prepared statements would too, and Django's psycopg default already makes none (prepare_threshold None).
# What remains is transaction-scoped by design: SELECT … FOR UPDATE SKIP LOCKED, pg_advisory_xact_lock.
DATABASE_POOLING = env("DATABASE_POOLING", default="session")
if DATABASE_POOLING not in ("session", "transaction"):
    raise ImproperlyConfigured(f"DATABASE_POOLING is {DATABASE_POOLING!r}: use session (the default) or transaction (PgBouncer's transaction pooling)")
if DATABASE_POOLING == "transaction":
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite serialises writers; wait instead of failing with "database is locked". WAL: `make run`'s
    # web, worker and beat are separate processes, and readers (pages, progress polls) then never wait
    # for a writer nor block one; synchronous=NORMAL is WAL's usual, safe pairing (no fsync per commit).
    DATABASES["default"].setdefault("OPTIONS", {}).update({
        "timeout": 20, "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    })
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Broker: tasks run in-process (eagerly) when no broker is configured (empty counts as none, as in
# .env.example), so the first run needs nothing. `make run` sets filesystem://localhost/ (below); production redis://.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="") or "memory://"
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not env("CELERY_BROKER_URL", default=""))
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_WORKER_PREFETCH_MULTIPLIER", default=4)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=120)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=100)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup closes every database connection before and after each task unless this
# is set: a new PostgreSQL connection per grade delivery (measured: the largest cost of a delivery).
# Set, connections are kept; gradesync.sender.deliver drops broken or obsolete ones itself
# (django.db.close_old_connections, honouring CONN_MAX_AGE and CONN_HEALTH_CHECKS).
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)}
if redis_sentinel.is_sentinel(CELERY_BROKER_URL):
    # sentinel://host:26379;sentinel://host2:26379/0: the Sentinels name the master (config.redis_sentinel).
    CELERY_BROKER_TRANSPORT_OPTIONS["master_name"] = redis_sentinel.master_name()
if CELERY_BROKER_URL.startswith("filesystem://"):
    # `make run`'s broker: kombu's filesystem transport, one file per message under CELERY_BROKER_FOLDER,
    # no server; for web, worker and beat on one machine. config/celery.py makes the folders. Its host
    # is ignored: `make run` names localhost only so that kombu does not warn "No hostname was supplied".
    _broker_folder = BASE_DIR / env("CELERY_BROKER_FOLDER", default=".cache/broker")  # relative to BASE_DIR
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Producers write where the worker reads: one folder for in and out.
        "data_folder_in": str(_broker_folder / "messages"),
        "data_folder_out": str(_broker_folder / "messages"),
        "control_folder": str(_broker_folder / "control"),  # exchange bindings (fanout)
        "store_processed": False,  # a message taken is deleted
        "polling_interval": 0.5,  # seconds between looks at an empty folder
    }
    CELERY_BEAT_SCHEDULE_FILENAME = str(_broker_folder / "beat-schedule")


def _default_cache_url() -> str:
    # django-lti keeps OIDC state in the cache and gradesync shares AGS tokens there: it must
    # work across processes. Redis when there is one; otherwise a file cache, never per-process memory.
    broker = env("CELERY_BROKER_URL", default="")
    if broker.startswith("redis://") or redis_sentinel.is_sentinel(broker):
        return re.sub(r"/\d*$", "", broker) + "/1"  # the broker's database 1 (for Sentinels, on the last address)
    return f"filecache://{BASE_DIR / '.cache' / 'django'}"


def _cache(url: str) -> dict:
    if redis_sentinel.is_sentinel(url):
        # A list of one: Django would split a string at ";" into a primary and replicas.
        return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": [url],
                "OPTIONS": {"pool_class": "config.redis_sentinel.SentinelPool"}}
    return env.cache_url_config(url)


CACHES = {"default": _cache(env("CACHE_URL", default=_default_cache_url()))}

SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
# LMSes frame our pages: over https courseware.middleware.FramedCookiesMiddleware makes the
# session and CSRF cookies SameSite=None; Secure so they travel in a cross-site iframe.
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# Behind a TLS-terminating proxy (production): https is detected from X-Forwarded-Proto, cookies
# are Secure, and browsers are told to use https only (HSTS). `manage.py check --deploy` is clean
# then; the deploy warnings silenced below are each a deliberate choice (tests/test_deploy_check.py).
BEHIND_TLS_PROXY = env.bool("BEHIND_TLS_PROXY", default=False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_TLS_PROXY else None
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=BEHIND_TLS_PROXY)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=BEHIND_TLS_PROXY)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if BEHIND_TLS_PROXY else 0)
# Off by default: HSTS on subdomains binds every host of the parent domain (often the vendor's own,
# with hosts this tool does not run) to https for a year; that is the domain owner's call.
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
# The proxy usually redirects http to https itself; turn on when it does not.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
X_FRAME_OPTIONS = "DENY"  # framed pages are exempted one by one and name their ancestors in the CSP
SILENCED_SYSTEM_CHECKS = [
    # W021 (HSTS preload): the browsers' preload list is near irreversible and applies to the whole domain.
    "security.W021",
]
if not SECURE_HSTS_INCLUDE_SUBDOMAINS:
    SILENCED_SYSTEM_CHECKS.append("security.W005")  # subdomains left out on purpose: see above
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # W040 (SQLite has no covering indexes): the INCLUDE columns of Delivery's indexes only spare
    # PostgreSQL a table read; SQLite builds the same indexes without them and answers the same.
    SILENCED_SYSTEM_CHECKS.append("models.W040")
if BEHIND_TLS_PROXY and not SECURE_SSL_REDIRECT:
    SILENCED_SYSTEM_CHECKS.append("security.W008")  # the proxy redirects http to https

# Content-Security-Policy (django-csp). Every page: our own origin only, and never framed. Pages an
# LMS frames replace frame-ancestors with the origins of the session's launch (courseware.framing).
# Scripts: a page that uses `request.csp_nonce` (the courseware player, grade sync, deep-link return)
# sends a nonce, and browsers then ignore 'unsafe-inline' there: only its nonced scripts run. Pages
# without a nonce (the admin's inline handlers) still need 'unsafe-inline' for now. Inline style
# attributes (progress bars) need style-src 'unsafe-inline'. Videos of the catalog come from any https host.
# The sandbox LMS (a test platform, mounted only in tests and `make run`) keeps its pages as they were.
CONTENT_SECURITY_POLICY = {
    "EXCLUDE_URL_PREFIXES": ["/sandbox-lms/"],
    "DIRECTIVES": {
        "default-src": [CSP_SELF],
        "script-src": [CSP_SELF, CSP_UNSAFE_INLINE, CSP_NONCE],
        "style-src": [CSP_SELF, CSP_UNSAFE_INLINE],
        "img-src": [CSP_SELF, "data:"],
        "media-src": [CSP_SELF, "https:"],
        "object-src": [CSP_NONE],
        "base-uri": [CSP_SELF],
        "frame-ancestors": [CSP_NONE],
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# A URL typed without a scheme is https: an LMS's endpoints always are, so "moodle.north.edu/mod/lti/token.php"
# is saved as the https URL instead of refused as plain http. Django 6.0's default; remove the line with 6.0.
FORMS_URLFIELD_ASSUME_HTTPS = True

STATIC_URL = "static/"
# `manage.py collectstatic --noinput` fills it at each release (`make web` runs it first).
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # gzip copies and content-hashed names ("base.5af66c1b1797.css"), so browsers may cache them for good.
    # With DEBUG on (make run) pages link the plain names and WhiteNoise serves them from the apps.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LOGIN_URL = "admin:login"
LOGIN_REDIRECT_URL = "admin:index"  # staff sign in only to the admin

# Staff sign-in (staff/): password, then a TOTP code (django-otp); enrolment with a QR code at the
# first sign-in. Failed passwords and codes lock a username from an address out (django-axes).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out username before any password check
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=15))
# Per username and client address (REMOTE_ADDR: behind a proxy, the proxy's, so per username there).
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_LOCKOUT_CALLABLE = "staff.views.locked_out"
# Failures are cleared by a complete sign-in (password and code), not by the password alone.
AXES_RESET_ON_SUCCESS = False
OTP_TOTP_THROTTLE_FACTOR = 1  # after n wrong codes in a row, wait 2^(n-1) seconds before the next
OTP_ADMIN_HIDE_SENSITIVE_DATA = True  # no TOTP key or QR code on the device admin pages
ADMIN_IDLE_TIMEOUT_MINUTES = env.int("ADMIN_IDLE_TIMEOUT_MINUTES", default=30)
# `make run` only: the demo logins need no authenticator app. Refused outside DEBUG.
DEMO_SKIP_2FA = env.bool("DEMO_SKIP_2FA", default=False)
if DEMO_SKIP_2FA and not DEBUG:
    raise ImproperlyConfigured("DEMO_SKIP_2FA=True is for the local demo only: it is refused when DEBUG is off.")

# Errors to Sentry when SENTRY_DSN is set (config.error_tracking: Django and Celery, no personal data, no
# frame variables, secrets masked); nothing is loaded or sent when it is not.
SENTRY_DSN = env.str("SENTRY_DSN", default="")
if SENTRY_DSN:
    from config.error_tracking import init_sentry

    init_sentry(
        dsn=SENTRY_DSN,
        environment=env.str("SENTRY_ENVIRONMENT", default="production"),
        release=env.str("SENTRY_RELEASE", default=""),
        traces_sample_rate=env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0),
    )

# One JSON object per line in production, plain text in `make run` (config.log_format), each line with the
# ids of the request, institution, registration, delivery or resync job it is about.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain" if DEBUG else "json")
if LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or plain, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "config.log_format.JsonFormatter"},
    },
    # No log line carries a private key, bearer token or signed assertion (institutions.redaction).
    "filters": {
        "redact_secrets": {"()": "institutions.redaction.RedactSecrets"},
        "context": {"()": "config.log_format.ContextFilter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["redact_secrets", "context"]},
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    # "django" drops Django's default handlers (unfiltered); its records reach the root's filtered one.
    "loggers": {"django.server": {"level": "WARNING"}, "django": {"handlers": [], "level": "INFO"}},
}

# The public base URL of this tool, used in the configuration handed to LMS admins when a
# request is not at hand (management commands). Views use the request's own host.
TOOL_BASE_URL = env("TOOL_BASE_URL", default="http://127.0.0.1:8000")
TOOL_TITLE = env("TOOL_TITLE", default="Courseware Grade Sync")
OTP_TOTP_ISSUER = TOOL_TITLE  # the account's name in staff members' authenticator apps

# Grade delivery (AGS).
AGS_CONNECT_TIMEOUT_SECONDS = env.float("AGS_CONNECT_TIMEOUT_SECONDS", default=3.05)
AGS_READ_TIMEOUT_SECONDS = env.float("AGS_READ_TIMEOUT_SECONDS", default=10.0)
AGS_HTTP_POOL_SIZE = env.int("AGS_HTTP_POOL_SIZE", default=64)
# Give up retrying a grade after this long; it then stands visibly as failed ("dead").
GRADE_DELIVERY_GIVE_UP_HOURS = env.int("GRADE_DELIVERY_GIVE_UP_HOURS", default=72)
# The sweeper re-queues deliveries still pending after this many seconds (lost broker messages).
GRADE_DELIVERY_REQUEUE_AFTER_SECONDS = env.int("GRADE_DELIVERY_REQUEUE_AFTER_SECONDS", default=30)
# The sweeper takes back a row claimed ("sending") this long ago by a worker that never finished
# (killed mid-send). Longer than the longest send (AGS timeouts × retries); drills shorten it.
GRADE_DELIVERY_STALE_CLAIM_SECONDS = env.int("GRADE_DELIVERY_STALE_CLAIM_SECONDS", default=300)
GRADE_SWEEP_INTERVAL_SECONDS = env.float("GRADE_SWEEP_INTERVAL_SECONDS", default=15.0)
# A sender that has sent every due grade of its LMS waits this long for the next one, holding its
# slot (a worker thread), at most GRADE_DELIVERY_LINGER_THREADS per worker process; 0 turns it off.
GRADE_DELIVERY_LINGER_SECONDS = env.float("GRADE_DELIVERY_LINGER_SECONDS", default=0.25)
GRADE_DELIVERY_LINGER_THREADS = env.int("GRADE_DELIVERY_LINGER_THREADS", default=4)
CELERY_TASK_ROUTES = {"gradesync.deliver_grade": {"queue": "grades"}, "gradesync.*": {"queue": "grades"}}
# /readyz shows why a check failed (hosts, ports) and, with ?full=1, the worker and beat heartbeats only
# to staff and to these networks (comma-separated CIDRs; the load balancer's health checks need neither).
HEALTH_DETAIL_NETWORKS = env.list("HEALTH_DETAIL_NETWORKS", default=["127.0.0.0/8", "::1/128"])
# /metrics (gradesync.metrics): Prometheus scrapes with this bearer token, or from these networks.
METRICS_TOKEN = env("METRICS_TOKEN", default="")
METRICS_NETWORKS = env.list("METRICS_NETWORKS", default=["127.0.0.0/8", "::1/128"])
CELERY_BEAT_SCHEDULE = {
    "sweep-grade-deliveries": {"task": "gradesync.sweep_deliveries", "schedule": GRADE_SWEEP_INTERVAL_SECONDS},
    # Resync jobs whose planner died: restarted after 15 minutes without progress, failed 45 later; and
    # settled jobs the senders did not see finish marked Done (a few indexed queries per active job).
    "sweep-resync-jobs": {"task": "gradesync.sweep_resync_jobs", "schedule": 60.0},
    # Beat's and a worker's heartbeats (gradesync.heartbeats; /readyz?full=1): beat marks each send, a worker each run.
    "heartbeat": {"task": "gradesync.heartbeat", "schedule": 15.0},
    # Sync health's chart reads closed hours from this rollup (hours whose open rows changed are
    # recounted here, and read from the outbox until then); a full recount now and then also
    # catches delivered rows deleted since they were counted.
    "roll-up-delivery-hours": {"task": "gradesync.roll_up_delivery_hours", "schedule": 300.0},
    "roll-up-delivery-hours-full": {"task": "gradesync.roll_up_delivery_hours", "schedule": 6 * 3600.0, "kwargs": {"full": True}},
    # Tool key rotation: the next key starts signing, a retiring key leaves the JWKS (also done when signing).
    "advance-tool-key-rotation": {"task": "institutions.advance_key_rotation", "schedule": 300.0},
}
# Key rotation (institutions/keys.py): platforms cache our JWKS, so a new key is published this long
# before it signs, and the old one stays published this long after.
ROTATION_LEAD_HOURS = env.float("ROTATION_LEAD_HOURS", default=24.0)
ROTATION_GRACE_HOURS = env.float("ROTATION_GRACE_HOURS", default=24.0)
# Dynamic Registration links (institutions/dynamic_registration): single use, valid this many days.
DYNAMIC_REGISTRATION_LINK_DAYS = env.float("DYNAMIC_REGISTRATION_LINK_DAYS", default=7.0)
