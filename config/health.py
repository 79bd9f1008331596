"""Health for load balancers and on-call: `/healthz` (the process answers; no I/O) and `/readyz` (the
database, the shared cache and the broker answer within a short timeout, and every migration is
applied). `/readyz?full=1` adds the worker's and beat's heartbeats (gradesync.heartbeats).

A failing check answers 503 and names the dependency, so a load balancer takes the host out and a
person reads why. Each check runs in a thread of its own with a deadline: a database that hangs
costs the probe READY_TIMEOUT_SECONDS, not the load balancer's whole timeout.
"""
from __future__ import annotations

import concurrent.futures
import ipaddress
import time

from django.conf import settings
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

READY_TIMEOUT_SECONDS = 2.0
_migrations_applied = False  # once true, true for the life of the process (a release migrates before it starts)
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="readyz")


def _database() -> str:
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connections.close_all()  # this thread's own connection: a probe never keeps one open
    return "ok"


def _migrations() -> str:
    global _migrations_applied
    if _migrations_applied:
        return "ok"
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    finally:
        connections.close_all()
    if pending:
        names = ", ".join(f"{migration.app_label}.{migration.name}" for migration, _ in pending[:5])
        raise RuntimeError(f"{len(pending)} migration(s) not applied ({names}): run `manage.py migrate`")
    _migrations_applied = True
    return "ok"


def _cache() -> str:
    key = "readyz-probe"
    cache.set(key, "1", 30)
    if cache.get(key) != "1":
        raise RuntimeError("wrote a key and could not read it back")
    return "ok"


def _broker() -> str:
    from config.celery import app

    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=READY_TIMEOUT_SECONDS)
    return "ok"


CHECKS = {"database": _database, "migrations": _migrations, "cache": _cache, "broker": _broker}


def run_checks(checks: dict, timeout: float | None = None) -> dict[str, str]:
    """Each check's "ok" or why not, all within `timeout` (READY_TIMEOUT_SECONDS) in all."""
    timeout = READY_TIMEOUT_SECONDS if timeout is None else timeout
    futures = {name: _pool.submit(check) for name, check in checks.items()}
    deadline = time.monotonic() + timeout
    results: dict[str, str] = {}
    for name, future in futures.items():
        try:
            results[name] = future.result(timeout=max(deadline - time.monotonic(), 0.01))
        except concurrent.futures.TimeoutError:
            results[name] = f"no answer within {timeout:g} s"
        except Exception as error:  # noqa: BLE001 — any failure is the answer, named
            results[name] = f"{type(error).__name__}: {error}"[:300]
    return results


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: this process answers. No I/O, so a database outage never restarts the web tier."""
    return JsonResponse({"status": "ok"})


def client_in(request: HttpRequest, networks: list[str]) -> bool:
    """Whether the request comes from an address in `networks` (the peer's address: behind a load
    balancer, its own; X-Forwarded-For is not trusted here)."""
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(network, strict=False) for network in networks)


def _may_see_details(request: HttpRequest) -> bool:
    """Error texts name hosts and ports: staff, or an address in HEALTH_DETAIL_NETWORKS (loopback by default)."""
    if getattr(request, "user", None) is not None and request.user.is_authenticated and request.user.is_staff:
        return True
    return client_in(request, settings.HEALTH_DETAIL_NETWORKS)


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when every dependency answers, else 503 naming those that do not (with why, and with
    `?full=1` the worker's and beat's heartbeats, for staff or HEALTH_DETAIL_NETWORKS)."""
    details = _may_see_details(request)
    results = run_checks(CHECKS)
    if request.GET.get("full") == "1" and details:
        from gradesync import heartbeats

        results.update(heartbeats.report())
    failing = sorted(name for name, value in results.items() if value != "ok")
    body: dict[str, object] = {"status": "unavailable: " + ", ".join(failing) if failing else "ok"}
    if details:
        body["checks"] = results
    return JsonResponse(body, status=503 if failing else 200)
