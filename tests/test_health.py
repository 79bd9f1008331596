"""/healthz and /readyz for load balancers and on-call: each dependency down in turn answers 503 naming it."""
from __future__ import annotations

import time

import pytest
from django.core.cache.backends.redis import RedisCache
from django.db import OperationalError
from django.db.backends.base.base import BaseDatabaseWrapper

from config import health
from config.celery import app
from gradesync import heartbeats

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(health, "_migrations_applied", False)


def _database_down(monkeypatch):
    def refused(self):
        raise OperationalError('connection to server at "127.0.0.1", port 5432 failed: Connection refused')

    monkeypatch.setattr(BaseDatabaseWrapper, "ensure_connection", refused)


def test_healthz_answers_without_touching_any_dependency(client, monkeypatch):
    _database_down(monkeypatch)
    monkeypatch.setattr(health, "cache", RedisCache("redis://127.0.0.1:1/0", {}))
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert "no-cache" in response.headers["Cache-Control"]


def test_readyz_is_ready_when_every_dependency_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "migrations": "ok", "cache": "ok", "broker": "ok"}}


def test_the_database_down_is_named(client, monkeypatch):
    _database_down(monkeypatch)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable: database, migrations"
    assert "Connection refused" in body["checks"]["database"] and body["checks"]["cache"] == "ok"


def test_the_cache_down_is_named(client, monkeypatch):
    monkeypatch.setattr(health, "cache", RedisCache("redis://127.0.0.1:1/0", {}))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable: cache"
    assert "ConnectionError" in response.json()["checks"]["cache"]


def test_the_broker_down_is_named(client, monkeypatch):
    from kombu import Connection

    # A real connection to a port nothing listens on.
    monkeypatch.setattr(app, "connection_for_write", lambda *args, **kwargs: Connection("redis://127.0.0.1:1/0"))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable: broker"


def test_migrations_not_applied_are_named(client, monkeypatch):
    from django.db.migrations.executor import MigrationExecutor

    class Pending:
        app_label, name = "gradesync", "0010_next"

    monkeypatch.setattr(MigrationExecutor, "migration_plan", lambda self, targets: [(Pending(), False)])
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["migrations"].endswith(
        "1 migration(s) not applied (gradesync.0010_next): run `manage.py migrate`")


def test_a_dependency_that_hangs_costs_the_probe_its_timeout_not_more(client, monkeypatch):
    monkeypatch.setattr(health, "READY_TIMEOUT_SECONDS", 0.5)
    monkeypatch.setitem(health.CHECKS, "cache", lambda: time.sleep(3) or "ok")
    started = time.monotonic()
    response = client.get("/readyz")
    assert time.monotonic() - started < 2.0
    assert response.status_code == 503 and response.json()["checks"]["cache"] == "no answer within 0.5 s"


def test_why_is_shown_to_loopback_and_staff_only(client, monkeypatch, admin_user):
    _database_down(monkeypatch)
    outside = client.get("/readyz?full=1", REMOTE_ADDR="203.0.113.9")
    assert outside.status_code == 503
    assert outside.json() == {"status": "unavailable: database, migrations"}  # no hosts, ports or heartbeats
    monkeypatch.undo()
    monkeypatch.setattr(health, "_migrations_applied", False)
    client.force_login(admin_user)
    staff = client.get("/readyz", REMOTE_ADDR="203.0.113.9")
    assert staff.status_code == 200 and "checks" in staff.json()


def test_full_readiness_names_a_missing_or_stale_beat_and_worker(client, monkeypatch):
    from django.core.cache import cache

    cache.delete_many([heartbeats.BEAT_KEY, heartbeats.WORKER_KEY])
    response = client.get("/readyz?full=1")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable: beat, worker"
    assert response.json()["checks"]["beat"] == "no beat heartbeat yet"

    heartbeats.beat_published()
    assert heartbeats.worker_ran("worker-a@host") == "ok"
    assert client.get("/readyz?full=1").status_code == 200

    later = time.time() + 125
    monkeypatch.setattr(heartbeats.time, "time", lambda: later)
    stale = client.get("/readyz?full=1").json()
    assert stale["status"] == "unavailable: beat, worker"
    assert stale["checks"]["worker"].startswith("last worker heartbeat 125 s ago (from worker-a@host)")


def test_the_heartbeat_task_marks_the_worker_that_ran_it(settings):
    from django.core.cache import cache

    cache.delete(heartbeats.WORKER_KEY)
    app.tasks["gradesync.heartbeat"].apply()
    assert heartbeats.report()["worker"] == "ok"
