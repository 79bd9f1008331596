#!/usr/bin/env python
"""Grade delivery benchmark: record → outbox → Celery worker → sandbox LMS, with real processes.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/app CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python scripts/bench_delivery.py [--quick]

What it does (everything on 127.0.0.1, every process it starts is stopped by process group):

* a database of its own, `<name>_bench` derived from DATABASE_URL (created if missing, migrated,
  emptied of earlier runs' grade-sync rows), shared by the tool's tables and the sandbox LMS's;
* Redis at CELERY_BROKER_URL's host/port, but on databases of its own (`--redis-db`, default 12
  for the broker and 13 for the cache): other people's tests purge db 0 and clear db 1;
* the sandbox LMS as its own gunicorn process (`sandbox_lms.wsgi`, as `sandbox_lms/api.py` says);
* real Celery workers: `celery -A config worker --pool=threads -Q grades,resync`;
* R registrations × C courses × S students × A graded activities on both sides: the sandbox via
  its api, the tool's rows directly (as the launches would have left them);
* phase 1, latency: `gradesync.api.record_result(...)` at a fixed rate; latency is from the
  delivery's `recorded_at` (written in the recording transaction) to the sandbox's receipt
  (`SandboxResult.updated_at`, written by the LMS when it stores the score);
* phase 2, throughput: the workers stop consuming, a burst of outbox rows is written (bulk, as
  record_result leaves them: pending, due now) and its senders woken as record_result wakes them
  after commit (`wake_senders`, in gradesync.wakeups or gradesync.sender), then consuming resumes
  and completed deliveries per second are measured until the burst is drained; CPU from /proc of
  the workers;
* the ceiling, in the same run: the workers' consumers cancelled again (they are idle), a lean
  pooled client in this process (`sandbox_bench._drive`: raw sockets and selectors) posts scores
  straight to the same sandbox LMS process with the concurrency the pipeline was allowed —
  registrations × in-flight keep-alive connections, one request in flight on each, each with its
  registration's bearer token and line items (their students: each (line item, user) on one
  connection, timestamps of now) — for `--ceiling-seconds` (10; 5 with --quick) after a 1 s
  warm-up. Its tokens are written with the sandbox's token model, not requested: the sandbox's
  `tokens_issued`, read before this phase anyway, stays the pipeline's `token_requests`.

The load average is logged at the start and at the end. The last line is machine-readable
(`ratio` = deliveries_per_s / ceiling_post_per_s):
`bench: p50_ms=<n> p99_ms=<n> first_grade_p99_ms=<n> deliveries_per_s=<n> token_requests=<n> lost=<n> ceiling_post_per_s=<n> ratio=<n.nn>`

With --slow-lms (`make bench BENCH_ARGS=--slow-lms`) it measures instead whether the senders keep a
slow LMS's in-flight limit busy: one registration, --in-flight 4, the sandbox's `latency_ms` fault
at --latency-ms 75, so the bound is in_flight × 1000 / latency_ms = 53.3 scores/s:

* live: `record_result` at --rate 80/s for --seconds 20 (recorder threads as phase 1), faster than
  the LMS can take them, so a backlog stands from the first send to the last; live_per_s is the
  deliveries sent over that window, (sent − 1) / (last sent_at − first sent_at); the steady middle
  (10th to 90th percentile of the sends) is logged too;
* resync: the rest of the cells get an eligible result (no delivery) and a Support user starts the
  institution's resync (`gradesync.resync.start_resync`) over every cell (≈ 2,000 grades by
  default); resync_per_s is the job's sent grades / (last sent_at − job created_at);
* the lean client's ceiling at the same 4 connections and 75 ms.

Its last line: `slow_lms: latency_ms=75 in_flight=4 bound_per_s=53.3 ceiling_post_per_s=<n>
live_per_s=<n> live_ratio=<n.nn> resync_per_s=<n> resync_ratio=<n.nn>` (ratios against bound_per_s;
the issue's target is ≥ 0.90).
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- Environment --------------------------------------------------------------------------------


def derived_database_url(url: str, suffix: str) -> str:
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "postgres"
    if not name.endswith(suffix):
        name = f"{name}{suffix}"
    return urlunsplit(parts._replace(path=f"/{name}"))


def redis_url(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def prepare_database(url: str) -> None:
    """Create the database if it is missing (connecting to the `postgres` database of the same server)."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))
    with psycopg.connect(admin, autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')


def configure_django(database_url: str, broker_url: str, cache_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Point this process's Django at the given services; returns the environment for child processes."""
    env = {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "CACHE_URL": cache_url,
        "CELERY_TASK_ALWAYS_EAGER": "False",
        "SANDBOX_LMS": "True",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "False",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or uuid.uuid4().hex * 2,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        "CONN_MAX_AGE": "600",
        **(extra or {}),
    }
    os.environ.update(env)
    import django

    django.setup()
    return {**os.environ, **env}


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


# --- Processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, process: subprocess.Popen | None = None, host: str = "127.0.0.1") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args[:3]} exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout} s")


class Processes:
    """Every process this run started, each in its own process group; stopped by pid/group only."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        out = open(self.log_dir / f"{name}.log", "ab")
        process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        process.bench_name = name  # type: ignore[attr-defined]
        self.started.append(process)
        return process

    @staticmethod
    def stop(process: subprocess.Popen, *, kill: bool = False, timeout: float = 15.0) -> None:
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=5)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_sandbox(processes: Processes, env: dict[str, str], *, port: int, workers: int, threads: int,
                  worker_class: str = "gevent") -> subprocess.Popen:
    sandbox_env = {**env, "DJANGO_SETTINGS_MODULE": "sandbox_lms.server_settings", "SANDBOX_LMS": "True"}
    process = processes.start(
        "sandbox-lms",
        [str(VENV_BIN / "gunicorn"), "sandbox_lms.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--worker-class", worker_class, "--workers", str(workers), "--threads", str(threads),
         "--worker-connections", "200", "--keep-alive", "30", "--backlog", "512"],
        sandbox_env,
    )
    wait_for_port(port, process=process)
    return process


def start_worker(processes: Processes, env: dict[str, str], *, name: str, concurrency: int, prefetch: int | None = None) -> subprocess.Popen:
    worker_env = dict(env)
    if prefetch:
        worker_env["CELERY_WORKER_PREFETCH_MULTIPLIER"] = str(prefetch)
    return processes.start(
        name,
        [str(VENV_BIN / "celery"), "-A", "config", "worker", "--pool=threads", f"--concurrency={concurrency}",
         "-Q", "grades,resync", f"--loglevel={os.environ.get('BENCH_WORKER_LOGLEVEL', 'WARNING')}", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-n", f"{name}@%h"],
        worker_env,
    )


def wait_for_workers(names: list[str], timeout: float = 45.0) -> None:
    from config.celery import app

    deadline = time.time() + timeout
    while time.time() < deadline:
        replies = app.control.ping(timeout=0.5) or []
        seen = {name.split("@")[0] for reply in replies for name in reply}
        if all(n in seen for n in names):
            return
    raise RuntimeError(f"workers {names} did not answer a ping in {timeout} s")


# --- Seeding ------------------------------------------------------------------------------------


class Cell:
    """One (course, student, activity): a gradebook cell on both sides."""

    __slots__ = ("registration", "course", "lti_user", "resource_link", "activity_key", "line_item_url",
                 "sandbox_line_item_id", "sandbox_user_id", "launch")

    def __init__(self, **kwargs) -> None:
        for key, value in kwargs.items():
            setattr(self, key, value)


def seed(*, port: int, registrations: int, courses: int, students: int, activities: int, profile: str,
         in_flight: int, tag: str) -> tuple[list[dict], list[Cell]]:
    """Both sides of R registrations × C courses × S students × A graded activities."""
    from django.db import transaction
    from django.utils import timezone
    from lti_tool.models import Key, LtiContext, LtiDeployment, LtiLineItem, LtiRegistration, LtiResourceLink, LtiUser

    from gradesync.api import LaunchFacts
    from institutions.models import Course, DeploymentOwnership, Institution, RegistrationProfile
    from sandbox_lms import api as sandbox
    from sandbox_lms.models import SandboxEnrolment, SandboxLineItem, SandboxResourceLink, SandboxUser

    if not Key.objects.filter(is_active=True).exists():
        Key.objects.generate()
    tool_jwk = Key.objects.active().latest().as_jwk()
    base = f"http://127.0.0.1:{port}"
    now = timezone.now().replace(microsecond=0)
    starts, ends = now - datetime.timedelta(days=14), now + datetime.timedelta(days=90)
    regs: list[dict] = []
    cells: list[Cell] = []
    for r in range(registrations):
        with transaction.atomic():
            institution = Institution.objects.create(name=f"Bench {tag} {r}", slug=f"bench-{tag}-{r}")
            client_id, deployment_id = f"bench-{tag}-{r}", f"dep-{tag}-{r}"
            seeded = sandbox.seed_platform(
                base_url=f"{base}/sandbox-lms", login_url=f"{base}/lti/init/", launch_url=f"{base}/lti/launch/",
                tool_public_jwks={"keys": [tool_jwk]}, profile=profile, client_id=client_id,
                deployment_id=deployment_id, student_names=(), name=f"Bench tool {tag} {r}",
                course_title=f"Bench {r}-0",
            )
            # Measure our throughput, not the sandbox's Canvas leaky bucket (10 requests/s per registration).
            sandbox.configure_registration(registration=seeded.registration, rate_limit_enabled=False)
            registration = LtiRegistration.objects.create(
                name=f"Bench {tag} {r}", client_id=client_id, uuid=uuid.uuid4(), issuer=seeded.platform.issuer,
                auth_url=seeded.auth_url, token_url=seeded.token_url, keyset_url=seeded.jwks_url,
            )
            RegistrationProfile.objects.create(
                registration=registration, lms_family=profile if profile in ("canvas", "moodle") else "other",
                max_requests_in_flight=in_flight,
            )
            deployment = LtiDeployment.objects.create(registration=registration, deployment_id=deployment_id, is_active=True)
            DeploymentOwnership.objects.create(deployment=deployment, institution=institution)
            sandbox_users = SandboxUser.objects.bulk_create([
                SandboxUser(platform=seeded.platform, sub=f"{tag}-{r}-s{s}-{uuid.uuid4().hex[:6]}", name=f"Student {s}")
                for s in range(students)
            ])
            lti_users = LtiUser.objects.bulk_create([
                LtiUser(registration=registration, sub=u.sub, name=u.name) for u in sandbox_users
            ])
            for c in range(courses):
                sandbox_course = seeded.course if c == 0 else sandbox.create_course(
                    deployment=seeded.deployment, title=f"Bench {r}-{c}", starts_at=starts, ends_at=ends
                )
                SandboxEnrolment.objects.bulk_create([
                    SandboxEnrolment(course=sandbox_course, user=u, role=sandbox.Role.LEARNER) for u in sandbox_users
                ])
                context = LtiContext.objects.create(
                    deployment=deployment, id_on_platform=sandbox_course.context_id, title=sandbox_course.title,
                    lineitems_url=sandbox.line_items_url(sandbox_course, seeded.registration),
                    can_query_lineitems=True, can_publish_scores=True,
                )
                course = Course.objects.create(
                    context=context, institution=institution, deployment=deployment, title=sandbox_course.title,
                    starts_at=sandbox_course.starts_at, ends_at=sandbox_course.ends_at,
                )
                launch = LaunchFacts(role="learner", course=course, deployment=deployment)
                sandbox_links = SandboxResourceLink.objects.bulk_create([
                    SandboxResourceLink(course=sandbox_course, title=f"Activity {a}", resource_link_id=uuid.uuid4().hex)
                    for a in range(activities)
                ])
                sandbox_items = SandboxLineItem.objects.bulk_create([
                    SandboxLineItem(course=sandbox_course, resource_link=link, label=link.title, score_maximum=100,
                                    resource_id=f"activity-{a}")
                    for a, link in enumerate(sandbox_links)
                ])
                links = LtiResourceLink.objects.bulk_create([
                    LtiResourceLink(context=context, id_on_platform=link.resource_link_id, title=link.title)
                    for link in sandbox_links
                ])
                LtiLineItem.objects.bulk_create([
                    LtiLineItem(context=context, resource_link=link, url=sandbox.line_item_url(item, seeded.registration),
                                label=item.label, maximum_score=100, resource_id=item.resource_id)
                    for link, item in zip(links, sandbox_items)
                ])
                for a, (link, item) in enumerate(zip(links, sandbox_items)):
                    for user, sandbox_user in zip(lti_users, sandbox_users):
                        cells.append(Cell(
                            registration=r, course=course, lti_user=user, resource_link=link,
                            activity_key=f"activity-{a}", line_item_url=sandbox.line_item_url(item, seeded.registration),
                            sandbox_line_item_id=item.pk, sandbox_user_id=sandbox_user.pk, launch=launch,
                        ))
        regs.append({"tool": registration, "sandbox": seeded.registration, "institution": institution})
    return regs, cells


# --- Measuring ----------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))
    return ordered[k]


def summary(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (f"n={len(values)} p50={percentile(values, 50):.0f} p95={percentile(values, 95):.0f} "
            f"p99={percentile(values, 99):.0f} max={max(values):.0f} ms")


def wait_drained(delivery_ids: list[int] | None, timeout: float, *, quiet: bool = False) -> bool:
    """Until no open delivery remains (of the given ids, or at all)."""
    from gradesync.models import OPEN_STATUSES, Delivery

    deadline = time.time() + timeout
    while time.time() < deadline:
        open_rows = Delivery.objects.filter(status__in=OPEN_STATUSES)
        if delivery_ids:
            # An id range, not 24,000 ids bound per poll: this process shares the cores it measures.
            open_rows = open_rows.filter(pk__gte=min(delivery_ids), pk__lte=max(delivery_ids))
        if not open_rows.exists():
            return True
        time.sleep(0.5)
    if not quiet:
        log(f"not drained after {timeout} s")
    return False


def receipt_times(cells: list[Cell]) -> dict[tuple[int, int], datetime.datetime]:
    from sandbox_lms.models import SandboxResult

    item_ids = {c.sandbox_line_item_id for c in cells}
    rows = SandboxResult.objects.filter(line_item_id__in=item_ids).values_list("line_item_id", "user_id", "updated_at")
    return {(item, user): updated for item, user, updated in rows}


def latencies(cells: list[Cell], results: dict[int, int]) -> tuple[list[float], list[float], list[float], int]:
    """(to LMS receipt, to sent_at, first grade of each course, lost) for the cells recorded in phase 1."""
    from gradesync.models import Delivery, DeliveryStatus

    receipts = receipt_times(cells)
    by_result = {
        d["result_id"]: d for d in Delivery.objects.filter(result_id__in=list(results.values())).values(
            "result_id", "status", "recorded_at", "sent_at", "course_id", "id")
    }
    to_lms, to_sent, first = [], [], []
    first_of_course: dict[int, tuple[int, float]] = {}
    lost = 0
    for index, cell in enumerate(cells):
        result_id = results.get(index)
        if result_id is None:
            continue
        delivery = by_result.get(result_id)
        if delivery is None or delivery["status"] != DeliveryStatus.SENT:
            lost += 1
            continue
        receipt = receipts.get((cell.sandbox_line_item_id, cell.sandbox_user_id))
        ms = ((receipt or delivery["sent_at"]) - delivery["recorded_at"]).total_seconds() * 1000
        to_lms.append(ms)
        to_sent.append((delivery["sent_at"] - delivery["recorded_at"]).total_seconds() * 1000)
        course_id = delivery["course_id"]
        if course_id not in first_of_course or delivery["id"] < first_of_course[course_id][0]:
            first_of_course[course_id] = (delivery["id"], ms)
    first = [ms for _, ms in first_of_course.values()]
    return to_lms, to_sent, first, lost


def record_at_rate(cells: list[Cell], *, rate: float, seconds: float, threads: int, tag: str) -> dict[int, int]:
    """record_result for cells[0:rate*seconds] on a fixed schedule; returns {cell index: result id}."""
    from django.db import close_old_connections
    from django.utils import timezone

    from gradesync import api

    total = min(len(cells), int(rate * seconds))
    indices = iter(range(total))
    results: dict[int, int] = {}
    late: list[float] = []
    lock = threading.Lock()
    start = time.monotonic() + 0.5

    def work() -> None:
        try:
            while True:
                with lock:
                    index = next(indices, None)
                if index is None:
                    return
                wait = start + index / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                else:
                    late.append(-wait)
                cell = cells[index]
                result = api.record_result(
                    source_ref=f"bench-{tag}-{index}", lti_user=cell.lti_user, course=cell.course,
                    activity_key=cell.activity_key, activity_title=cell.activity_key, resource_link=cell.resource_link,
                    score=Decimal(50 + index % 50) / 100, completed_at=timezone.now(), launch=cell.launch,
                    link_graded=True,
                )
                with lock:
                    results[index] = result.pk
        finally:
            close_old_connections()

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(work) for _ in range(threads)]:
            future.result()
    elapsed = time.monotonic() - start
    behind = percentile(late, 99) * 1000 if late else 0.0
    log(f"recorded {len(results)} results in {elapsed:.1f} s ({len(results) / elapsed:.0f}/s from {threads} threads; "
        f"recorder p99 behind schedule {behind:.0f} ms)")
    return results


def warm_up_lms(regs: list[dict], cells: list[Cell], posts_each: int = 8) -> None:
    """A few scores posted to each LMS (to cells phase 1 never measures, with tokens minted as the ceiling's
    are), so that every sandbox process has its database pool and Django loaded before the first grade: a
    real LMS is warm. The tool's worker is left cold (its first token, connections and queries count)."""
    import requests
    from django.utils import timezone

    tokens = mint_tokens(regs)
    for r, (reg, token) in enumerate(zip(regs, tokens)):
        cell = next(c for c in reversed(cells) if c.registration == r)
        student = reg["sandbox"].platform.users.get(pk=cell.sandbox_user_id).sub
        for _ in range(posts_each):
            requests.post(
                cell.line_item_url + "/scores", timeout=10,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/vnd.ims.lis.v1.score+json"},
                json={"userId": student, "scoreGiven": 1, "scoreMaximum": 100, "activityProgress": "Completed",
                      "gradingProgress": "FullyGraded", "timestamp": timezone.now().isoformat()},
            )


def write_burst(cells: list[Cell], tag: str) -> list[int]:
    """Outbox rows as record_result leaves them (eligible result + pending delivery due now), in bulk."""
    from django.db import transaction
    from django.utils import timezone

    from gradesync.models import Delivery, Result

    from lti_tool.models import LtiLineItem

    urls = {c.line_item_url for c in cells}
    line_items = dict(LtiLineItem.objects.filter(url__in=urls).values_list("url", "id"))
    ids: list[int] = []
    for chunk_start in range(0, len(cells), 2000):
        chunk = cells[chunk_start:chunk_start + 2000]
        now = timezone.now()
        with transaction.atomic():
            results = Result.objects.bulk_create([
                Result(source_ref=f"burst-{tag}-{chunk_start + i}", lti_user=c.lti_user, course=c.course,
                       activity_key=c.activity_key, activity_title=c.activity_key, resource_link=c.resource_link,
                       score=Decimal("0.75"), completed_at=now, launch_role="learner", launched_course=c.course,
                       launch_deployment=c.course.deployment, link_graded=True, is_eligible=True)
                for i, c in enumerate(chunk)
            ])
            deliveries = Delivery.objects.bulk_create([
                Delivery(result=res, course=c.course, institution_id=c.course.institution_id,
                         registration_id=c.course.deployment.registration_id, deployment=c.course.deployment,
                         lti_user=c.lti_user, resource_link=c.resource_link, line_item_id=line_items[c.line_item_url],
                         activity_key=c.activity_key, score=res.score, recorded_at=now, next_attempt_at=now)
                for res, c in zip(results, chunk)
            ])
        ids.extend(d.pk for d in deliveries)
    return ids


def wake_senders():
    """Grade sync's `wake_senders(rows)`, rows (delivery id, registration id, is resync): in
    gradesync.wakeups when it exists (where the ledger's after-commit wake-up moved), else gradesync.sender."""
    try:
        from gradesync.wakeups import wake_senders as wake
    except ImportError:
        from gradesync.sender import wake_senders as wake
    return wake


def publish(ids: list[int]) -> int:
    """Wake the burst's senders as record_result does after commit: `wake_senders` with the rows'
    (delivery id, registration id, is resync), in the burst's order. Returns the tasks queued."""
    from gradesync.models import Delivery

    rows = {pk: (pk, registration_id, is_resync) for pk, registration_id, is_resync in
            Delivery.objects.filter(pk__in=ids).values_list("pk", "registration_id", "is_resync")}
    return wake_senders()([rows[pk] for pk in ids])


# --- The ceiling: a lean pooled client straight to the sandbox LMS ------------------------------


def scores_path(line_item_url: str) -> str:
    """The path (and query: Moodle's type_id) of a line item's /scores endpoint."""
    parts = urlsplit(line_item_url)
    return parts.path + "/scores" + (f"?{parts.query}" if parts.query else "")


def mint_tokens(regs: list[dict]) -> list[str]:
    """A bearer token (score scope, an hour) per sandbox registration for the lean client, written with
    the sandbox's own token model as its token endpoint writes it — but not through the endpoint, so
    the registration's `tokens_issued` (the pipeline's `token_requests`) does not count it."""
    from django.utils import timezone

    from sandbox_lms.models import SandboxToken
    from sandbox_lms.protocol import SCOPE_SCORE

    tokens = []
    for reg in regs:
        token = secrets.token_urlsafe(32)
        SandboxToken.objects.create(
            registration=reg["sandbox"], deployment_id="", token=token, jti=f"ceiling-{uuid.uuid4().hex}",
            scopes=SCOPE_SCORE, expires_at=timezone.now() + datetime.timedelta(hours=1),
        )
        tokens.append(token)
    return tokens


def ceiling_connections(regs: list[dict], cells: list[Cell], tokens: list[str],
                        per_registration: int) -> list[tuple[str, list[tuple[str, str]]]]:
    """`per_registration` connections per registration, each with its registration's token and cells
    of its own: the registration's line items dealt round-robin (a connection posts to its own line
    items' /scores, for every student of the course), or, with fewer line items than connections,
    the cells themselves. Each (line item, user) is on one connection only: its timestamps increase."""
    connections = []
    for r, token in enumerate(tokens):
        by_item: dict[str, list[str]] = {}
        for c in cells:
            if c.registration == r:
                by_item.setdefault(c.line_item_url, []).append(c.lti_user.sub)
        items = sorted(by_item.items())
        groups: list[list[tuple[str, str]]] = [[] for _ in range(per_registration)]
        if len(items) >= per_registration:
            for i, (url, users) in enumerate(items):
                groups[i % per_registration].extend((scores_path(url), user) for user in users)
        else:
            flat = [(scores_path(url), user) for url, users in items for user in users]
            for i, cell in enumerate(flat):
                groups[i % per_registration].append(cell)
        connections.extend((token, group) for group in groups if group)
    return connections


def measure_ceiling(port: int, regs: list[dict], cells: list[Cell], *, per_registration: int, seconds: float,
                    warmup: float = 1.0, sandbox_process: subprocess.Popen | None = None, database: str = "") -> dict:
    """Scores/s the sandbox LMS process accepts from the lean client at the pipeline's concurrency.

    Call it with the workers idle (their consumers cancelled). Returns {"rate", "connections",
    "errors", "ok"}; logs `ceiling: N POST/s accepted (C connections, E non-200)`, and the CPU of
    the client (this process), the sandbox and the database's backends over warm-up and count."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from sandbox_bench import _drive

    tokens = mint_tokens(regs)
    connections = ceiling_connections(regs, cells, tokens, per_registration)
    own0, sandbox0, pg0 = time.process_time(), sandbox_cpu(sandbox_process) if sandbox_process else 0.0, \
        postgres_cpu(database) if database else 0.0
    counts = _drive(port, connections, seconds, warmup)
    span = warmup + seconds
    own, sandbox, pg = time.process_time() - own0, (sandbox_cpu(sandbox_process) - sandbox0) if sandbox_process else 0.0, \
        (postgres_cpu(database) - pg0) if database else 0.0
    rate = counts["ok"] / counts["elapsed"]
    log(f"ceiling: {rate:.0f} POST/s accepted ({counts['connections']} connections, {counts['errors']} non-200)"
        f" — lean client, {warmup:g} s warm-up ({counts['warmup_ok']} accepted, {counts['warmup_errors']} non-200)"
        f" then {seconds:g} s counted; CPU in cores: client {own / span:.2f}"
        + (f", sandbox LMS {sandbox / span:.2f}" if sandbox_process else "")
        + (f", PostgreSQL backends {pg / span:.2f}" if database else "")
        + f" (of {os.cpu_count()})")
    return {"rate": rate, "connections": counts["connections"], "errors": counts["errors"], "ok": counts["ok"]}


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def token_requests(regs: list[dict]) -> list[int]:
    from sandbox_lms.models import SandboxRegistration

    return [SandboxRegistration.objects.get(pk=r["sandbox"].pk).tokens_issued for r in regs]


def reset_database() -> None:
    """Forget earlier runs' grade-sync rows and request log (the seeded platforms are per run)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE gradesync_deliveryexchange, gradesync_delivery, gradesync_result, gradesync_syncwarning,"
            " sandbox_lms_sandboxrequestlog, sandbox_lms_sandboxresult, sandbox_lms_sandboxtoken CASCADE"
        )


# --- Main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (about 2 minutes in all)")
    parser.add_argument("--slow-lms", action="store_true",
                        help="instead of phases 1/2: a slow LMS (--latency-ms) driven live and in a resync (see above)")
    parser.add_argument("--latency-ms", type=float, default=75.0, help="with --slow-lms: the sandbox's latency_ms fault")
    parser.add_argument("--ceiling-seconds", type=float, default=None, help="lean client's counted seconds (10; 5 with --quick)")
    parser.add_argument("--registrations", type=int, default=None, help="4 (--slow-lms: 1)")
    parser.add_argument("--courses", type=int, default=None, help="courses per registration: 10 (--slow-lms: 2)")
    parser.add_argument("--students", type=int, default=None,
                        help="students per registration (enrolled in each course): 30 (--slow-lms: 50)")
    parser.add_argument("--activities", type=int, default=None,
                        help="graded activities per course: phase 1's 4 (--slow-lms: 20 in all, 10 with --quick)")
    parser.add_argument("--profile", default="canvas", choices=["canvas", "moodle", "generic"])
    parser.add_argument("--rate", type=float, default=None, help="results per second in phase 1: 100 (--slow-lms: 80)")
    parser.add_argument("--seconds", type=float, default=None, help="length of phase 1: 30 (--slow-lms: 20; --quick: ≤ 10)")
    parser.add_argument("--burst", type=int, default=24000, help="deliveries in the throughput burst (phase 2)")
    parser.add_argument("--workers", type=int, default=1, help="Celery worker processes")
    parser.add_argument("--concurrency", type=int, default=16, help="threads per Celery worker (16, as make worker runs it)")
    parser.add_argument("--prefetch", type=int, default=8, help="worker_prefetch_multiplier")
    parser.add_argument("--in-flight", type=int, default=None, help="max_requests_in_flight per registration: 8 (--slow-lms: 4)")
    parser.add_argument("--sandbox-workers", type=int, default=2)
    parser.add_argument("--sandbox-threads", type=int, default=8, help="threads per sandbox worker (gthread)")
    parser.add_argument("--sandbox-class", default="gevent", choices=["gevent", "gthread"],
                        help="gunicorn worker class of the sandbox LMS (see sandbox_lms/fast.py)")
    parser.add_argument("--recorder-threads", type=int, default=4)
    parser.add_argument("--redis-db", type=int, default=12, help="broker db (the cache uses the next one)")
    parser.add_argument("--logs", default=str(ROOT / ".cache" / "bench"), help="where process logs go")
    parser.add_argument("--profile-workers", action="store_true", help="py-spy record the worker in phase 1 and phase 2 (logs/worker-phase1.txt, worker.txt)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = (
        {"registrations": 1, "courses": 2, "students": 50, "activities": 10 if quick else 20, "rate": 80.0,
         "seconds": 20.0, "in_flight": 4} if args.slow_lms else
        {"registrations": 4, "courses": 5 if quick else 10, "students": 30, "activities": 4, "rate": 100.0,
         "seconds": 30.0, "in_flight": 8}
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.ceiling_seconds is None:
        args.ceiling_seconds = 5.0 if quick else 10.0
    if quick:
        args.seconds = min(args.seconds, 10.0)
        args.burst = min(args.burst, 6000)
        args.courses = min(args.courses, 5)
    if args.slow_lms and args.latency_ms <= 0:
        parser.error("--slow-lms needs --latency-ms > 0")
    return args


def require_services() -> tuple[str, str]:
    database_url = os.environ.get("DATABASE_URL", "")
    broker_url = os.environ.get("CELERY_BROKER_URL", "")
    problems = []
    if not database_url.startswith(("postgres://", "postgresql://")):
        problems.append("DATABASE_URL must point at PostgreSQL (postgres://user@127.0.0.1:5432/name)")
    if not broker_url.startswith("redis://"):
        problems.append("CELERY_BROKER_URL must point at Redis (redis://127.0.0.1:6379/0)")
    for url in (database_url, broker_url):
        host = urlsplit(url).hostname if url else None
        if host and host not in ("127.0.0.1", "localhost", "::1"):
            problems.append(f"{url}: this benchmark only talks to 127.0.0.1")
    if problems:
        sys.exit("bench_delivery: refusing to run:\n  " + "\n  ".join(problems))
    return database_url, broker_url


def setup_services(redis_db: int, suffix: str = "_bench") -> tuple[str, dict[str, str]]:
    """The run's own database (`<name><suffix>`, created, migrated, emptied of earlier runs' rows) and
    Redis dbs (`redis_db` for the broker, the next for the cache; both emptied); Django pointed at them.
    Returns (the database's URL, the environment for child processes)."""
    database_url, broker_url = require_services()
    bench_db = derived_database_url(database_url, suffix)
    log(f"database {urlsplit(bench_db).path.lstrip('/')}, Redis dbs {redis_db}/{redis_db + 1}")
    prepare_database(bench_db)
    env = configure_django(bench_db, redis_url(broker_url, redis_db), redis_url(broker_url, redis_db + 1))
    migrate()
    reset_database()
    from django.core.cache import cache

    cache.clear()
    # The broker db is this script's own: empty it (app.control.purge() would empty only the default
    # queue, and tasks an earlier run left on `grades` would be worked through before this run's).
    import redis

    redis.Redis.from_url(redis_url(broker_url, redis_db)).flushdb()
    return bench_db, env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_services()
    started_at = time.monotonic()
    load_start = load_average()
    log(f"load average at the start: {load_start} (1, 5, 15 min; {os.cpu_count()} cores)")
    if args.slow_lms:
        return slow_lms_main(args, started_at, load_start)
    bench_db, env = setup_services(args.redis_db)
    bench_name = urlsplit(bench_db).path.lstrip("/")
    from config.celery import app

    processes = Processes(Path(args.logs))
    tag = uuid.uuid4().hex[:6]
    try:
        port = free_port()
        sandbox_process = start_sandbox(processes, env, port=port, workers=args.sandbox_workers,
                                        threads=args.sandbox_threads, worker_class=args.sandbox_class)
        total_cells = args.registrations * args.courses * args.students * args.activities
        burst_activities = -(-args.burst // (args.registrations * args.courses * args.students))
        regs, cells = seed(
            port=port, registrations=args.registrations, courses=args.courses, students=args.students,
            activities=args.activities + burst_activities, profile=args.profile, in_flight=args.in_flight, tag=tag,
        )
        phase1_cells = [c for c in cells if int(c.activity_key.split("-")[1]) < args.activities]
        burst_cells = [c for c in cells if int(c.activity_key.split("-")[1]) >= args.activities]
        # Round-robin over registrations, as many institutions' grades arrive (each has its own in-flight limit).
        per_reg = [[c for c in burst_cells if c.registration == r] for r in range(args.registrations)]
        burst_cells = [c for group in itertools.zip_longest(*per_reg) for c in group if c is not None][: args.burst]
        # Interleave courses so each course's first grade comes early and registrations share the load.
        phase1_cells.sort(key=lambda c: (c.lti_user.pk * 7919 + c.course.pk * 104729 + hash(c.activity_key)) % 1000003)
        warm_up_lms(regs, cells)
        log(f"seeded {args.registrations} registrations × {args.courses} courses × {args.students} students × "
            f"{args.activities}+{burst_activities} activities ({len(cells)} cells; phase 1 uses {total_cells})")
        names = [f"bench-{tag}-w{n}" for n in range(args.workers)]
        workers = [start_worker(processes, env, name=n, concurrency=args.concurrency, prefetch=args.prefetch) for n in names]
        wait_for_workers(names)
        log(f"sandbox LMS on 127.0.0.1:{port} ({args.sandbox_workers} {args.sandbox_class} workers), "
            f"{args.workers} worker(s) × {args.concurrency} threads, prefetch {args.prefetch}, "
            f"in-flight {args.in_flight}/registration")

        # Phase 1: latency at a fixed rate.
        cpu0 = sum(cpu_seconds(w.pid) for w in workers)
        if args.profile_workers:
            subprocess.Popen(
                [str(VENV_BIN / "py-spy"), "record", "-p", str(workers[0].pid), "-o", str(Path(args.logs) / "worker-phase1.txt"),
                 "--format", "raw", "-r", "50", "-d", "12", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        results = record_at_rate(phase1_cells, rate=args.rate, seconds=args.seconds, threads=args.recorder_threads,
                                 tag=tag)
        wait_drained(None, 120)
        cpu1 = sum(cpu_seconds(w.pid) for w in workers)
        to_lms, to_sent, first, lost1 = latencies(phase1_cells, results)
        log(f"phase 1 latency commit → LMS receipt: {summary(to_lms)}")
        log(f"phase 1 latency commit → sent_at:     {summary(to_sent)}")
        log(f"phase 1 first grade of each course:   {summary(first)}")
        log(f"phase 1 worker CPU {cpu1 - cpu0:.1f} s for {len(to_lms)} deliveries "
            f"({(cpu1 - cpu0) / max(len(to_lms), 1) * 1000:.2f} ms/delivery)")

        # Phase 2: throughput of a burst.
        # Only this run's workers listen on this broker database.
        app.control.cancel_consumer("grades", reply=True)
        time.sleep(1.0)
        t0 = time.monotonic()
        burst_ids = write_burst(burst_cells, tag)
        woken = publish(burst_ids)
        log(f"burst: {len(burst_ids)} outbox rows written and {woken} sender tasks queued (wake_senders) "
            f"in {time.monotonic() - t0:.1f} s")
        spy = None
        if args.profile_workers:
            spy = subprocess.Popen(
                [str(VENV_BIN / "py-spy"), "record", "-p", str(workers[0].pid), "-o", str(Path(args.logs) / "worker.txt"),
                 "--format", "raw", "-r", "50", "-d", "30", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        cpu0 = sum(cpu_seconds(w.pid) for w in workers)
        sandbox_cpu0 = sandbox_cpu(sandbox_process)
        pg_cpu0 = postgres_cpu(bench_name)
        from django.db.models import Count, Max
        from django.utils import timezone

        from gradesync.models import Delivery, DeliveryStatus

        box0 = box_busy_seconds()
        t_start, wall_start = time.monotonic(), timezone.now()
        app.control.add_consumer("grades", reply=True)
        drained = wait_drained(burst_ids, 400)
        elapsed = time.monotonic() - t_start
        if drained:
            # To the last grade sent, not to the poll that saw it (polls are 0.5 s apart).
            last_sent = Delivery.objects.filter(pk__gte=min(burst_ids), pk__lte=max(burst_ids)).aggregate(last=Max("sent_at"))["last"]
            elapsed = (last_sent - wall_start).total_seconds()
        cpu1 = sum(cpu_seconds(w.pid) for w in workers)
        sandbox_cpu1 = sandbox_cpu(sandbox_process)
        pg_cpu1 = postgres_cpu(bench_name)
        box1 = box_busy_seconds()
        if spy is not None:
            spy.wait(timeout=60)
        sent_burst = Delivery.objects.filter(pk__in=burst_ids, status=DeliveryStatus.SENT).count()
        rate = sent_burst / elapsed
        log(f"phase 2: {sent_burst}/{len(burst_ids)} sent in {elapsed:.1f} s = {rate:.0f} deliveries/s "
            f"({'drained' if drained else 'NOT drained'}); busy ≥ 60 s: {'yes' if elapsed >= 60 else 'no'}")
        log(f"phase 2 CPU: workers {cpu1 - cpu0:.1f} s = {(cpu1 - cpu0) / max(sent_burst, 1) * 1000:.2f} ms/delivery; "
            f"sandbox LMS {sandbox_cpu1 - sandbox_cpu0:.1f} s = "
            f"{(sandbox_cpu1 - sandbox_cpu0) / max(sent_burst, 1) * 1000:.2f} ms/request; PostgreSQL backends "
            f"{pg_cpu1 - pg_cpu0:.1f} s = {(pg_cpu1 - pg_cpu0) / max(sent_burst, 1) * 1000:.2f} ms/delivery; "
            f"whole box {box1 - box0:.1f} s busy = {(box1 - box0) / max(sent_burst, 1) * 1000:.2f} ms/delivery "
            f"({(box1 - box0) / max(time.monotonic() - t_start, 0.001):.2f} of {os.cpu_count()} cores)")
        lost2 = len(burst_ids) - sent_burst
        statuses = dict(Delivery.objects.values_list("status").annotate(n=Count("id")))
        tokens = token_requests(regs)
        log(f"token requests per registration: {tokens}; delivery statuses: {statuses}")
        lost = lost1 + lost2

        # The ceiling: the lean client at the pipeline's concurrency, the workers idle.
        app.control.cancel_consumer("grades", reply=True)
        ceiling = measure_ceiling(port, regs, cells, per_registration=args.in_flight, seconds=args.ceiling_seconds,
                                  sandbox_process=sandbox_process, database=bench_name)
        ratio = rate / ceiling["rate"] if ceiling["rate"] else float("nan")
        log(f"pipeline {rate:.0f} deliveries/s against the ceiling {ceiling['rate']:.0f} POST/s: ratio {ratio:.2f} "
            f"(target ≥ 0.5)")
        log(f"total {time.monotonic() - started_at:.0f} s; logs in {args.logs}; load average at the start {load_start}, "
            f"at the end {load_average()}")
        print(
            f"bench: p50_ms={percentile(to_lms, 50):.0f} p99_ms={percentile(to_lms, 99):.0f} "
            f"first_grade_p99_ms={percentile(first, 99):.0f} deliveries_per_s={rate:.0f} "
            f"token_requests={sum(tokens)} lost={lost} ceiling_post_per_s={ceiling['rate']:.0f} ratio={ratio:.2f}",
            flush=True,
        )
        return 0
    finally:
        processes.stop_all()


# --- --slow-lms ---------------------------------------------------------------------------------


def slow_lms_main(args: argparse.Namespace, started_at: float, load_start: str) -> int:
    """A slow LMS: does the pipeline keep its in-flight limit busy, live and in a resync?"""
    bench_db, env = setup_services(args.redis_db)
    from django.contrib.auth import get_user_model
    from django.db.models import Count, Max, Min

    from config.celery import app
    from gradesync import resync
    from gradesync.models import Delivery, DeliveryStatus, ResyncJob
    from sandbox_lms import api as sandbox

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_resync

    ResyncJob.objects.all().delete()  # earlier runs' (their institutions are gone from the sandbox anyway)

    bound = args.registrations * args.in_flight * 1000 / args.latency_ms
    processes = Processes(Path(args.logs))
    tag = uuid.uuid4().hex[:6]
    try:
        port = free_port()
        sandbox_process = start_sandbox(processes, env, port=port, workers=args.sandbox_workers,
                                        threads=args.sandbox_threads, worker_class=args.sandbox_class)
        regs, cells = seed(
            port=port, registrations=args.registrations, courses=args.courses, students=args.students,
            activities=args.activities, profile=args.profile, in_flight=args.in_flight, tag=tag,
        )
        for reg in regs:  # before the workers start: every request of the run meets the latency
            sandbox.set_faults(registration=reg["sandbox"], latency_ms=args.latency_ms)
        cells.sort(key=lambda c: (c.lti_user.pk * 7919 + c.course.pk * 104729 + hash(c.activity_key)) % 1000003)
        live_cells = cells[: int(args.rate * args.seconds)]
        rest = cells[len(live_cells):]
        names = [f"slow-{tag}-w{n}" for n in range(args.workers)]
        for n in names:
            start_worker(processes, env, name=n, concurrency=args.concurrency, prefetch=args.prefetch)
        wait_for_workers(names)
        log(f"slow LMS: {args.registrations} registration(s) × {args.courses} courses × {args.students} students × "
            f"{args.activities} activities = {len(cells)} cells; the sandbox answers after {args.latency_ms:g} ms; "
            f"{args.in_flight} in flight per registration: bound {bound:.1f} scores/s; "
            f"{args.workers} worker(s) × {args.concurrency} threads")

        # (a) live: recorded faster than the LMS takes them.
        from django.utils import timezone

        recorded_from, recording_began = time.monotonic(), timezone.now()
        results = record_at_rate(live_cells, rate=args.rate, seconds=args.seconds, threads=args.recorder_threads,
                                 tag=tag)
        recorded_for, recording_ended = time.monotonic() - recorded_from, timezone.now()
        drain_timeout = len(live_cells) / (0.25 * bound) + 60
        drained = wait_drained(None, drain_timeout)
        sent_at = sorted(Delivery.objects.filter(result_id__in=list(results.values()), status=DeliveryStatus.SENT)
                         .values_list("sent_at", flat=True))
        live_lost = len(results) - len(sent_at)
        live_rate = mid_rate = float("nan")
        if len(sent_at) >= 2:
            span = (sent_at[-1] - sent_at[0]).total_seconds()
            live_rate = (len(sent_at) - 1) / span if span else float("nan")
            i10, i90 = int(0.1 * (len(sent_at) - 1)), int(0.9 * (len(sent_at) - 1))
            mid_span = (sent_at[i90] - sent_at[i10]).total_seconds()
            mid_rate = (i90 - i10) / mid_span if mid_span else float("nan")
            log(f"live: {len(sent_at)}/{len(results)} sent ({'drained' if drained else 'NOT drained'}); "
                f"first → last sent {span:.1f} s = {live_rate:.1f}/s, the window a backlog stands (the first grade "
                f"was sent {(sent_at[0] - recording_began).total_seconds():.1f} s after recording began, the last "
                f"{(sent_at[-1] - recording_ended).total_seconds():.1f} s after it ended); steady middle, 10th → 90th "
                f"percentile of sends: {mid_rate:.1f}/s")
        if len(results) / max(recorded_for, 1e-9) < bound:
            log(f"live: WARNING the recorder reached {len(results) / recorded_for:.1f}/s, below the bound "
                f"{bound:.1f}/s: no standing backlog, live_per_s measures the recorder")

        # (b) resync: every cell, the live ones again and the rest with a fresh eligible result.
        bench_resync._record_results(rest, tag)
        institution = regs[0]["institution"]
        support, _ = get_user_model().objects.get_or_create(
            username=f"bench-support-{tag}", defaults={"is_staff": True, "is_superuser": True})
        job = resync.start_resync(scope=resync.ResyncScope(institution=institution), acting_user=support)
        created = job.created_at
        log(f"resync job #{job.pk} started: {job.estimated} grades estimated")
        deadline = time.monotonic() + (job.estimated or len(cells)) / (0.25 * bound) + 60
        while time.monotonic() < deadline:
            time.sleep(1.0)
            job.refresh_from_db()
            if not resync.refresh_progress(job).active:
                break
        job.refresh_from_db()
        ends = Delivery.objects.filter(resync_job=job, status=DeliveryStatus.SENT).aggregate(
            first=Min("sent_at"), last=Max("sent_at"), n=Count("id"))
        statuses = dict(Delivery.objects.filter(resync_job=job).values_list("status").annotate(n=Count("id")))
        resync_rate = float("nan")
        if ends["last"]:
            seconds = (ends["last"] - created).total_seconds()
            resync_rate = ends["n"] / seconds
            log(f"resync: job {job.status}, {ends['n']} sent of {job.estimated} (statuses {statuses}); created → last "
                f"sent {seconds:.1f} s = {resync_rate:.1f}/s; first → last sent "
                f"{(ends['last'] - ends['first']).total_seconds():.1f} s")
        else:
            log(f"resync: job {job.status}, nothing sent (statuses {statuses})")

        # The lean client at the same connections and latency, the workers idle.
        app.control.cancel_consumer("grades", reply=True)
        app.control.cancel_consumer("resync", reply=True)
        ceiling = measure_ceiling(port, regs, cells, per_registration=args.in_flight, seconds=args.ceiling_seconds,
                                  sandbox_process=sandbox_process, database=urlsplit(bench_db).path.lstrip("/"))
        tokens = token_requests(regs)
        log(f"token requests per registration: {tokens}; live lost {live_lost}")
        log(f"total {time.monotonic() - started_at:.0f} s; logs in {args.logs}; load average at the start {load_start}, "
            f"at the end {load_average()}")
        print(
            f"slow_lms: latency_ms={args.latency_ms:g} in_flight={args.in_flight} bound_per_s={bound:.1f} "
            f"ceiling_post_per_s={ceiling['rate']:.1f} live_per_s={live_rate:.1f} live_ratio={live_rate / bound:.2f} "
            f"resync_per_s={resync_rate:.1f} resync_ratio={resync_rate / bound:.2f}",
            flush=True,
        )
        return 0 if drained and live_lost == 0 and job.status == "done" else 1
    finally:
        processes.stop_all()


def box_busy_seconds() -> float:
    """CPU seconds every process on the machine spent busy (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def sandbox_cpu(process: subprocess.Popen) -> float:
    """The gunicorn master and its workers (children in its process group)."""
    total = cpu_seconds(process.pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == process.pid:  # ppid
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def postgres_cpu(database: str) -> float:
    """CPU of the PostgreSQL backends connected to the bench database now (workers keep theirs)."""
    total = 0.0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f" {database} ".encode() not in cmdline.read_bytes() + b" ":
                continue
            total += cpu_seconds(int(cmdline.parent.name))
        except (OSError, ValueError):
            continue
    return total


if __name__ == "__main__":
    sys.exit(main())
