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
It also times the one-by-one path (`services.plan_delivery(resync=True)` per grade) on a sample,
for comparison.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
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
    parser.add_argument("--courses", type=int, default=50)
    parser.add_argument("--learners", type=int, default=200)
    parser.add_argument("--activities", type=int, default=10)
    parser.add_argument("--sample", type=int, default=1000, help="grades planned one by one, for comparison")
    parser.add_argument("--runs", type=int, default=1, help="plan the job this many times; report the median")
    parser.add_argument("--reuse", action="store_true", help="plan the newest seeded institution of this shape again")
    args = parser.parse_args()

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
    from gradesync import resync, services
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
        services.plan_delivery(course=delivery.course, lti_user=delivery.lti_user, activity_key=delivery.activity_key,
                               resource_link=None, resync=True)
    one_by_one = time.perf_counter() - started
    print(f"one by one: {len(sample)} grades in {one_by_one:.2f} s → {keys} would take ~{one_by_one / len(sample) * keys:.0f} s")
    purged = app.control.purge()
    print(f"purged {purged} queued messages")


if __name__ == "__main__":
    main()
