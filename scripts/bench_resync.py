#!/usr/bin/env python
"""Measure how long a resync job takes to plan 100k eligible grades, against PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/resync_bench .venv/bin/python scripts/bench_resync.py --runs 3

It creates the database if missing, migrates it, seeds one institution with COURSES courses ×
LEARNERS learners × ACTIVITIES graded activities (one line item each), two eligible results per
(course, learner, activity) — 0.9 then 0.5 — and then times `gradesync.resync.run_job` for an
institution-wide job: set-based batches (`resync.BATCH_SIZE`), each batch's deliveries written in
one transaction and queued (after commit, one message per batch) on the resync queue of the
broker (CELERY_BROKER_URL, default memory://). Nothing is sent to any LMS (no worker consumes the
queue; the script purges it at the end). With --runs N it plans N times, deleting the job's
deliveries in between, and reports each time and the median; --reuse plans the newest seeded
institution of the same shape again instead of seeding another (seeding takes about a minute).
It also times the one-by-one path (`ledger.plan_delivery(resync=True)` per grade) on a sample,
for comparison.

With --deliver it sends them too, end to end, with real processes (the helpers of
scripts/bench_delivery.py): the sandbox LMS on gunicorn (gevent) answering every request after
--latency-ms (its `latency_ms` fault), Celery workers consuming the grades and resync queues, and
one institution holding --registrations LMS registrations (each its own sandbox platform and
deployment; the courses split between them) × --courses × --students × --activities grades, each
registration allowing --in-flight requests at once. A Support user starts the institution's
resync (`resync.start_resync`); the script follows the job as the admin's progress bar does
(`refresh_progress`, every second) and reports the time from the job's creation to its last
delivery finished, deliveries/s, the job's counters, and what the LMS holds:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/resync_bench CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \
        .venv/bin/python scripts/bench_resync.py --deliver --registrations 4 --courses 25 --students 100 --activities 10

It uses a database `<name>_deliver` (emptied of earlier runs' rows) and Redis dbs --redis-db and
the next one. It prints `bench_resync: grades=<n> seconds=<n> deliveries_per_s=<n> sent=<n>
refused=<n> failed=<n> lost=<n> status=<s>`, then, last, a machine-readable line against the bound
the in-flight limits set, bound_per_s = registrations × in_flight × 1000 / latency_ms (ratio =
grades_per_s / bound_per_s; duplicates = score POSTs the LMS accepted beyond the grades sent; the
1-minute load average when the script started and when it ended):
`resync: grades=<n> seconds=<n> grades_per_s=<n> duplicates=<n> bound_per_s=<n> ratio=<n.nn> load_start=<n> load_end=<n>`
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _prepare_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{name}"')


def _seed(courses: int, learners: int, activities: int):
    from django.utils import timezone
    from lti_tool.models import LtiContext, LtiDeployment, LtiLineItem, LtiRegistration, LtiUser

    from gradesync.models import Delivery, ResyncJob, Result
    from institutions.models import Course, DeploymentOwnership, Institution, RegistrationProfile

    tag = uuid.uuid4().hex[:8]
    institution = Institution.objects.create(name=f"Bench {tag}", slug=f"bench-{tag}")
    registration = LtiRegistration.objects.create(
        name=f"Bench Canvas {tag}", issuer=f"https://bench-{tag}.example", client_id=tag, uuid=uuid.uuid4(),
        auth_url="https://lms.invalid/auth", token_url="https://lms.invalid/token", keyset_url="https://lms.invalid/jwks",
    )
    RegistrationProfile.objects.create(registration=registration, lms_family="canvas")
    deployment = LtiDeployment.objects.create(registration=registration, deployment_id=f"dep-{tag}", is_active=True)
    DeploymentOwnership.objects.create(deployment=deployment, institution=institution)
    users = LtiUser.objects.bulk_create(
        [LtiUser(registration=registration, sub=f"{tag}-u{n}", name=f"Learner {n}") for n in range(learners)]
    )
    now = timezone.now()
    results: list[Result] = []
    for c in range(courses):
        context = LtiContext.objects.create(deployment=deployment, id_on_platform=f"{tag}-c{c}", title=f"Course {c}",
                                            lineitems_url=f"https://lms.invalid/courses/{c}/line_items")
        course = Course.objects.create(context=context, institution=institution, deployment=deployment, title=f"Course {c}")
        LtiLineItem.objects.bulk_create(
            [LtiLineItem(context=context, url=f"https://lms.invalid/{tag}/courses/{c}/line_items/{a}", label=f"Activity {a}",
                         maximum_score=10, resource_id=str(a)) for a in range(activities)]
        )
        for user in users:
            for a in range(activities):
                for minutes, score in ((60, "0.9"), (30, "0.5")):
                    results.append(Result(
                        source_ref=f"{tag}-{c}-{user.pk}-{a}-{minutes}", lti_user=user, course=course, activity_key=str(a),
                        activity_title=f"Activity {a}", score=Decimal(score), completed_at=now - timedelta(minutes=minutes),
                        launch_role="learner", launched_course=course, launch_deployment=deployment, is_eligible=True,
                    ))
        if len(results) >= 20000:
            Result.objects.bulk_create(results, batch_size=5000)
            results = []
    Result.objects.bulk_create(results, batch_size=5000)
    return institution


def _seeded(keys: int):
    """The newest bench institution holding exactly `keys` grades, if any."""
    from gradesync.models import Result
    from institutions.models import Institution

    for institution in Institution.objects.filter(slug__startswith="bench-").order_by("-id")[:5]:
        results = Result.objects.filter(course__institution=institution, is_eligible=True).count()
        if results == 2 * keys:
            return institution
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--courses", type=int, default=50, help="courses (with --deliver: per registration)")
    parser.add_argument("--learners", type=int, default=200)
    parser.add_argument("--activities", type=int, default=10)
    parser.add_argument("--sample", type=int, default=1000, help="grades planned one by one, for comparison")
    parser.add_argument("--runs", type=int, default=1, help="plan the job this many times; report the median")
    parser.add_argument("--reuse", action="store_true", help="plan the newest seeded institution of this shape again")
    deliver = parser.add_argument_group("--deliver: send the grades to the sandbox LMS with real workers")
    deliver.add_argument("--deliver", action="store_true")
    deliver.add_argument("--registrations", type=int, default=4, help="LMS registrations of the one institution")
    deliver.add_argument("--students", type=int, default=100, help="students per registration (in each of its courses)")
    deliver.add_argument("--in-flight", type=int, default=4, help="max_requests_in_flight per registration (default 4)")
    deliver.add_argument("--latency-ms", type=float, default=20.0, help="the sandbox LMS answers each request after this")
    deliver.add_argument("--profile", default="canvas", choices=["canvas", "moodle"])
    deliver.add_argument("--workers", type=int, default=1, help="Celery worker processes")
    deliver.add_argument("--concurrency", type=int, default=0, help="threads per worker (default: in-flight slots + 8)")
    deliver.add_argument("--prefetch", type=int, default=8)
    deliver.add_argument("--sandbox-workers", type=int, default=2)
    deliver.add_argument("--timeout", type=float, default=1200.0, help="give up following the job after this many seconds")
    deliver.add_argument("--poll-seconds", type=float, default=1.0,
                         help="refresh the job's progress this often (the admin's progress bar: every second)")
    deliver.add_argument("--vacuum-seconds", type=float, default=30.0,
                         help="when the server's autovacuum is off: VACUUM ANALYZE the outbox this often, as it would (0: never)")
    deliver.add_argument("--redis-db", type=int, default=12, help="broker db (the cache uses the next one)")
    deliver.add_argument("--logs", default=str(ROOT / ".cache" / "bench-resync"), help="where process logs go")
    args = parser.parse_args()
    if args.deliver:
        sys.exit(deliver_main(args))

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("Set DATABASE_URL to a PostgreSQL database, e.g. postgres://postgres@127.0.0.1:5432/resync_bench")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("CELERY_BROKER_URL", "memory://")
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "0"  # queue the deliveries; nothing sends them
    _prepare_database(url)

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    from config.celery import app
    from gradesync import ledger, resync
    from gradesync.models import Delivery, ResyncJob, ResyncJobStatus

    keys = args.courses * args.learners * args.activities
    institution = _seeded(keys) if args.reuse else None
    if institution is None:
        started = time.perf_counter()
        institution = _seed(args.courses, args.learners, args.activities)
        print(f"seeded {keys} grades ({2 * keys} eligible results) in {time.perf_counter() - started:.1f} s")
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    else:
        print(f"reusing {institution} ({keys} grades)")

    scope = resync.ResyncScope(institution=institution)
    started = time.perf_counter()
    preview = resync.preview_resync(scope)
    print(f"preview: {preview.grades} grades in {time.perf_counter() - started:.2f} s")

    times: list[float] = []
    for run in range(args.runs):
        Delivery.objects.filter(institution=institution).delete()
        ResyncJob.objects.filter(institution=institution).delete()
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE gradesync_delivery")
            cursor.execute("ANALYZE gradesync_result")
        job = ResyncJob.objects.create(institution=institution, status=ResyncJobStatus.QUEUED, estimated=preview.grades,
                                       requested_by_name="bench")
        started = time.perf_counter()
        outcome = resync.run_job(job.pk, slice_seconds=3600)
        planning = time.perf_counter() - started
        times.append(planning)
        job.refresh_from_db()
        print(f"run {run + 1}: planned {job.planned} grades (skipped {job.skipped}) in {planning:.2f} s "
              f"({job.planned / planning:.0f} grades/s), batches of {resync.BATCH_SIZE}, outcome {outcome!r}, "
              f"load average {os.getloadavg()[0]:.2f}, broker {os.environ['CELERY_BROKER_URL']}")
        assert Delivery.objects.filter(resync_job=job).count() == keys
    if args.runs > 1:
        print(f"planning median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f})")

    # The one-by-one path on a sample, for comparison (its deliveries already exist: it updates them).
    sample = list(Delivery.objects.filter(resync_job=job).select_related("course__institution", "lti_user")[: args.sample])
    started = time.perf_counter()
    for delivery in sample:
        ledger.plan_delivery(course=delivery.course, lti_user=delivery.lti_user, activity_key=delivery.activity_key,
                             resource_link=None, resync=True)
    one_by_one = time.perf_counter() - started
    print(f"one by one: {len(sample)} grades in {one_by_one:.2f} s → {keys} would take ~{one_by_one / len(sample) * keys:.0f} s")
    purged = app.control.purge()
    print(f"purged {purged} queued messages")


# --- --deliver ----------------------------------------------------------------------------------


def _one_institution(regs: list[dict]):
    """bench_delivery.seed makes an institution per registration: make them one institution's LMSes
    (as a university with several Canvas sub-accounts or a Canvas and a Moodle has)."""
    from institutions.models import Course, DeploymentOwnership, Institution

    institution = regs[0]["institution"]
    others = [r["institution"].pk for r in regs[1:]]
    Course.objects.filter(institution_id__in=others).update(institution=institution)
    DeploymentOwnership.objects.filter(institution_id__in=others).update(institution=institution)
    Institution.objects.filter(pk__in=others).delete()
    return institution


def _record_results(cells, tag: str) -> int:
    """One eligible result per cell (as record_result leaves it after a launch), no delivery: the resync sends them."""
    from django.utils import timezone

    from gradesync.models import Result

    now = timezone.now()
    for start in range(0, len(cells), 5000):
        Result.objects.bulk_create([
            Result(source_ref=f"resync-{tag}-{start + i}", lti_user=c.lti_user, course=c.course,
                   activity_key=c.activity_key, activity_title=c.activity_key, resource_link=c.resource_link,
                   score=Decimal(50 + (start + i) % 50) / 100, completed_at=now - timedelta(minutes=5),
                   launch_role="learner", launched_course=c.course, launch_deployment=c.course.deployment,
                   link_graded=True, is_eligible=True)
            for i, c in enumerate(cells[start:start + 5000])
        ])
    return len(cells)


def _lms_holds(cells, job) -> tuple[int, int]:
    """(cells whose LMS gradebook holds the grade the job sent, score POSTs the LMS accepted)."""
    from gradesync.models import Delivery
    from sandbox_lms.models import SandboxRequestLog, SandboxResult

    sent = {
        (url, user): float(score) for url, user, score in
        Delivery.objects.filter(resync_job=job, status="sent").values_list("line_item__url", "lti_user_id", "score")
    }
    held = {
        (item, user): given / maximum for item, user, given, maximum in
        SandboxResult.objects.filter(line_item_id__in={c.sandbox_line_item_id for c in cells})
        .values_list("line_item_id", "user_id", "score_given", "score_maximum")
    }
    matching = 0
    for c in cells:
        want = sent.get((c.line_item_url, c.lti_user.pk))
        got = held.get((c.sandbox_line_item_id, c.sandbox_user_id))
        matching += want is not None and got is not None and abs(want - got) < 1e-6
    posts = SandboxRequestLog.objects.filter(kind="scores", status__lt=300).count()
    return matching, posts


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / bench_clk_tck()


def bench_clk_tck() -> int:
    return os.sysconf("SC_CLK_TCK")


class _Vacuum(threading.Thread):
    """VACUUM ANALYZE the outbox every few seconds: what autovacuum does in production (migration
    0005 sets the outbox's threshold at 2 % changed rows), on a server where it is off. Without it,
    every claim, progress count and send walks the dead row versions of the rows already sent."""

    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.url, self.seconds, self.stop, self.runs = url, seconds, threading.Event(), 0

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            while not self.stop.wait(self.seconds):
                connection.execute("VACUUM (ANALYZE) gradesync_delivery")
                self.runs += 1


def deliver_main(args: argparse.Namespace) -> int:
    """Seed, start the sandbox LMS and the workers, run one institution-wide resync job, report."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_delivery as bench

    database_url, broker_url = bench.require_services()
    load_start = os.getloadavg()
    bench.log(f"load average at the start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
              f"({os.cpu_count()} cores)")
    bench_db = bench.derived_database_url(database_url, "_deliver")
    bench.log(f"database {urlsplit(bench_db).path.lstrip('/')}, Redis dbs {args.redis_db}/{args.redis_db + 1}")
    bench.prepare_database(bench_db)
    env = bench.configure_django(bench_db, bench.redis_url(broker_url, args.redis_db), bench.redis_url(broker_url, args.redis_db + 1))
    bench.migrate()
    bench.reset_database()
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.db import connection
    from django.db.models import Avg, Count, Max, Min

    from gradesync import resync
    from gradesync.models import Delivery, DeliveryExchange, ResyncJob
    from sandbox_lms import api as sandbox

    cache.clear()
    # The broker db is this script's own: empty it (purge() empties only the default queue; tasks an
    # earlier run left on `resync` or `grades` would be worked through before this run's).
    import redis

    redis.Redis.from_url(bench.redis_url(broker_url, args.redis_db)).flushdb()
    ResyncJob.objects.all().delete()
    processes = bench.Processes(Path(args.logs))
    tag = uuid.uuid4().hex[:6]
    try:
        port = bench.free_port()
        bench.start_sandbox(processes, env, port=port, workers=args.sandbox_workers, threads=1)
        started = time.monotonic()
        regs, cells = bench.seed(
            port=port, registrations=args.registrations, courses=args.courses, students=args.students,
            activities=args.activities, profile=args.profile, in_flight=args.in_flight, tag=tag,
        )
        for reg in regs:  # before any request: the sandbox reads a registration once per process
            sandbox.set_faults(registration=reg["sandbox"], latency_ms=args.latency_ms)
        institution = _one_institution(regs)
        grades = _record_results(cells, tag)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        bench.log(f"seeded one institution: {args.registrations} registrations × {args.courses} courses × "
                  f"{args.students} students × {args.activities} activities = {grades} grades in "
                  f"{time.monotonic() - started:.0f} s; the LMS answers after {args.latency_ms:.0f} ms; "
                  f"{args.in_flight} requests in flight per registration")
        slots = args.registrations * args.in_flight
        concurrency = args.concurrency or slots + 8
        names = [f"resync-{tag}-w{n}" for n in range(args.workers)]
        workers = [bench.start_worker(processes, env, name=n, concurrency=concurrency, prefetch=args.prefetch) for n in names]
        bench.wait_for_workers(names)
        bench.log(f"{args.workers} worker(s) × {concurrency} threads (queues grades, resync), prefetch {args.prefetch}; "
                  f"sandbox LMS {args.sandbox_workers} gevent workers on 127.0.0.1:{port}")

        support, _ = get_user_model().objects.get_or_create(
            username=f"bench-support-{tag}", defaults={"is_staff": True, "is_superuser": True})
        with connection.cursor() as cursor:
            cursor.execute("SHOW autovacuum")
            autovacuum = cursor.fetchone()[0] == "on"
        vacuum = None
        if not autovacuum and args.vacuum_seconds > 0:
            vacuum = _Vacuum(bench_db, args.vacuum_seconds)
            vacuum.start()
        bench.log(f"autovacuum {'on' if autovacuum else 'off'} on this server"
                  + (f": the script vacuums the outbox every {args.vacuum_seconds:.0f} s" if vacuum else ""))
        sandbox_process = processes.started[0]
        cpu0 = sum(bench.cpu_seconds(w.pid) for w in workers)
        sandbox0, machine0, own0 = bench.sandbox_cpu(sandbox_process), _machine_busy_seconds(), time.process_time()
        load0 = os.getloadavg()[0]
        t0 = time.monotonic()
        job = resync.start_resync(scope=resync.ResyncScope(institution=institution), acting_user=support)
        created = job.created_at
        bench.log(f"job #{job.pk} started ({job.estimated} grades estimated; start_resync took {time.monotonic() - t0:.1f} s)")
        progress = resync.refresh_progress(job)
        last_report = 0.0
        polls: list[float] = []
        while time.monotonic() - t0 < args.timeout:
            time.sleep(args.poll_seconds)
            polled = time.perf_counter()
            job.refresh_from_db()
            progress = resync.refresh_progress(job)
            polls.append((time.perf_counter() - polled) * 1000)
            elapsed = time.monotonic() - t0
            if elapsed - last_report >= 15:
                last_report = elapsed
                bench.log(f"  {elapsed:5.0f} s: {progress.status}, planned {progress.planned}, sent {progress.sent}, "
                          f"refused {progress.refused}, failed {progress.failed}, open {progress.pending}, "
                          f"load {os.getloadavg()[0]:.1f}")
            if not progress.active:
                break
        cpu1 = sum(bench.cpu_seconds(w.pid) for w in workers)
        sandbox1, machine1, own1 = bench.sandbox_cpu(sandbox_process), _machine_busy_seconds(), time.process_time()
        wall = time.monotonic() - t0
        if vacuum is not None:
            vacuum.stop.set()
        job.refresh_from_db()
        ends = Delivery.objects.filter(resync_job=job).aggregate(
            first_sent=Min("sent_at"), last_sent=Max("sent_at"))
        last_exchange = DeliveryExchange.objects.filter(delivery__resync_job=job).aggregate(last=Max("attempted_at"))["last"]
        statuses = dict(Delivery.objects.filter(resync_job=job).values_list("status").annotate(n=Count("id")))
        finished = max(t for t in (ends["last_sent"], last_exchange, job.finished_at) if t is not None) \
            if (ends["last_sent"] or last_exchange) else None
        seconds = (finished - created).total_seconds() if finished else float("nan")
        planning = (job.planned_at - created).total_seconds() if job.planned_at else float("nan")
        sending = (ends["last_sent"] - ends["first_sent"]).total_seconds() if ends["last_sent"] else float("nan")
        matching, posts = _lms_holds(cells, job)
        per_registration = list(
            Delivery.objects.filter(resync_job=job, status="sent").values_list("registration_id")
            .annotate(n=Count("id"), first=Min("sent_at"), last=Max("sent_at")).order_by("registration_id")
        )
        bench.log(f"job #{job.pk}: {job.get_status_display()} — planned {job.planned}, sent {job.sent}, refused {job.refused}, "
                  f"failed {job.failed}, skipped {job.skipped}; deliveries by status {statuses}")
        bench.log(f"created → last delivery finished: {seconds:.1f} s ({job.sent / seconds:.0f} deliveries/s); "
                  f"planning done after {planning:.1f} s; first → last sent {sending:.1f} s "
                  f"({job.sent / sending if sending else float('nan'):.0f}/s); job marked done "
                  f"{(job.finished_at - created).total_seconds() if job.finished_at else float('nan'):.1f} s after creation")
        for registration_id, n, first, last in per_registration:
            span = (last - first).total_seconds()
            cap = f"{args.in_flight * 1000 / args.latency_ms:.0f}/s" if args.latency_ms else "nothing"
            bench.log(f"  registration {registration_id}: {n} sent in {span:.1f} s ({n / span if span else 0:.0f}/s; "
                      f"its limit {args.in_flight} in flight × {args.latency_ms:.0f} ms caps it at {cap})")
        durations = DeliveryExchange.objects.filter(delivery__resync_job=job).aggregate(
            mean=Avg("duration_ms"), longest=Max("duration_ms"))
        bench.log(f"progress refreshed {len(polls)} times (every {args.poll_seconds:g} s, as the admin's progress bar "
                  f"polls): {statistics.mean(polls):.0f} ms each on average, {max(polls):.0f} ms at most")
        bench.log(f"a score POST took {durations['mean'] or 0:.1f} ms on average (longest {durations['longest']} ms), "
                  f"as the workers timed it, for an LMS answering after {args.latency_ms:.0f} ms")
        bench.log(f"the LMS holds the job's grade in {matching}/{len(cells)} cells; {posts} score POSTs accepted "
                  f"({posts - job.sent} more than grades sent); worker CPU {cpu1 - cpu0:.0f} s "
                  f"({(cpu1 - cpu0) / max(job.sent, 1) * 1000:.1f} ms/delivery); load average {load0:.1f} at the start, "
                  f"{os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} at the end")
        machine, worker_cpu, sandbox_cpu, own = machine1 - machine0, cpu1 - cpu0, sandbox1 - sandbox0, own1 - own0
        bench.log(f"CPU over {wall:.0f} s: the machine {machine:.0f} s of {wall * (os.cpu_count() or 1):.0f} "
                  f"({machine / wall:.2f} of {os.cpu_count()} cores busy) — workers {worker_cpu:.0f} s, sandbox LMS "
                  f"{sandbox_cpu:.0f} s, this script (progress polls, checks) {own:.0f} s, the rest (PostgreSQL, Redis, "
                  f"anything else on the box) {machine - worker_cpu - sandbox_cpu - own:.0f} s; "
                  f"{machine / max(job.sent, 1) * 1000:.1f} ms of CPU per grade in all"
                  + (f"; {vacuum.runs} vacuums" if vacuum else ""))
        lost = grades - job.sent - job.refused - job.failed - job.skipped
        grades_per_s = job.sent / seconds
        bound = args.registrations * args.in_flight * 1000 / args.latency_ms if args.latency_ms > 0 else float("inf")
        ratio = grades_per_s / bound
        duplicates = posts - job.sent
        load_end = os.getloadavg()
        bench.log(f"against the in-flight bound {args.registrations} registrations × {args.in_flight} in flight × "
                  f"1000 / {args.latency_ms:g} ms = {bound:.1f}/s: {grades_per_s:.1f} grades/s, ratio {ratio:.2f}; "
                  f"load average {load_start[0]:.2f} at the start of the script, "
                  f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at the end")
        print(f"bench_resync: grades={grades} seconds={seconds:.1f} deliveries_per_s={job.sent / seconds:.0f} "
              f"sent={job.sent} refused={job.refused} failed={job.failed} lost={lost} status={job.status}", flush=True)
        print(f"resync: grades={grades} seconds={seconds:.1f} grades_per_s={grades_per_s:.1f} duplicates={duplicates} "
              f"bound_per_s={bound:.1f} ratio={ratio:.2f} load_start={load_start[0]:.2f} load_end={load_end[0]:.2f}",
              flush=True)
        return 0 if job.status == "done" and lost == 0 and matching == len(cells) else 1
    finally:
        processes.stop_all()


if __name__ == "__main__":
    main()
