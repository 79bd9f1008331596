"""Fixtures shared by the whole suite. Tests always have two institutions."""
from __future__ import annotations

import os

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache

from gradesync import ags
from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT

from . import speed
from .factories import InstitutionFactory

if os.environ.get("TEST_SPEEDUPS", "1") == "1":  # TEST_SPEEDUPS=0 measures the suite without them
    speed.install_fast_flush()
    speed.install_key_pool()


@pytest.fixture(autouse=True)
def _pooled_keys():
    speed.start_test()
    yield
    speed.end_test()


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.clear()
    ags.forget_tokens()
    yield


@pytest.fixture
def two_institutions():
    return InstitutionFactory(name="North College", slug="north"), InstitutionFactory(name="South University", slug="south")


@pytest.fixture
def staff_user(django_user_model):
    """Make a staff user holding one role group: staff_user(SUPPORT)."""

    def make(role: str | None, username: str | None = None):
        user = django_user_model.objects.create_user(
            username=username or f"{(role or 'none').lower().replace('-', '')}-staff", password="pw", is_staff=True
        )
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


def sign_in_verified(client, user):
    """Log `client` in as `user` with a second factor given, as the admin requires (staff.sites).

    The user gets a confirmed TOTP device, and the session records it as verified the way
    django_otp.login does; the code step itself is tested in tests/staff.
    """
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from staff.middleware import mark_active

    device = TOTPDevice.objects.filter(user=user, confirmed=True).first() or TOTPDevice.objects.create(
        user=user, name="test", confirmed=True
    )
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    mark_active(session)  # signed in just now, as the code step records it
    session.save()
    return client


@pytest.fixture
def client_for(client, staff_user):
    """A test client logged in (password and second factor) as a staff member of one role."""

    def make(role: str | None):
        user = staff_user(role)
        sign_in_verified(client, user)
        client.user = user
        return client

    return make


@pytest.fixture
def admin_client(client, admin_user):
    """pytest-django's superuser client, signed in with a second factor as the admin requires."""
    return sign_in_verified(client, admin_user)


ROLES = [SUPPORT, INTEGRATION, READ_ONLY]


def _real_services_configured() -> bool:
    from django.conf import settings

    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql") and settings.CELERY_BROKER_URL.startswith(
        "redis://"
    )


@pytest.fixture
def celery_worker(live_server, transactional_db):
    """A real Celery worker process (thread pool) on the real broker, against the test database.

    Needs PostgreSQL and Redis (CI has both); skipped on the embedded SQLite defaults.
    """
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from django.conf import settings
    from django.db import connection

    from config.celery import app

    if not _real_services_configured():
        pytest.skip("needs PostgreSQL and Redis (set DATABASE_URL and CELERY_BROKER_URL)")
    db = connection.settings_dict
    database_url = f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "CELERY_TASK_ALWAYS_EAGER_OVERRIDE": "0",
    }
    queue_suffix = f"{os.getpid()}"
    app.control.purge()
    celery = Path(sys.executable).parent / "celery"
    process = subprocess.Popen(
        [str(celery), "-A", "config", "worker", "--pool=threads", "--concurrency=8", "-Q", "grades,resync",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "-n", f"test-{queue_suffix}@%h"],
        env=env, cwd=settings.BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = False
    deadline = time.time() + 30
    while time.time() < deadline:
        replies = app.control.ping(timeout=0.5)
        if any(name.startswith(f"test-{queue_suffix}@") for reply in replies for name in reply):
            break
        if process.poll() is not None:
            raise RuntimeError("celery worker exited: " + (process.stdout.read() if process.stdout else ""))
    else:
        process.kill()
        raise RuntimeError("celery worker did not start in 30 s")
    yield process
    app.conf.task_always_eager = previous
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def pytest_sessionfinish(session, exitstatus):
    import shutil

    from django.conf import settings

    location = settings.CACHES["default"].get("LOCATION", "")
    if "/tests-" in str(location):
        shutil.rmtree(location, ignore_errors=True)


# The longest tests (a real `make run`, Chromium walks) start first, so pytest-xdist's workers do not
# end the run with one worker still on them while the others wait.
SLOW_FIRST = ("tests/test_make_run.py", "tests/test_browser")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        return next((i for i, prefix in enumerate(SLOW_FIRST) if item.nodeid.startswith(prefix)), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order
