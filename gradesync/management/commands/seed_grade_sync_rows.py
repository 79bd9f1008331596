"""Seed many grade sync rows quickly, to measure the admin at scale (scripts/bench_changelists.py).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/changelist_bench \
        .venv/bin/python manage.py seed_grade_sync_rows --rows 1000000

Makes two institutions (each with a Canvas registration, a deployment, courses and learners),
then `--rows` results, `--rows` deliveries (one per result; mostly sent, some pending, retrying,
refused and failed, spread over the last 30 days and written in time order) and `--jobs` finished resync jobs (default:
`--rows`). On PostgreSQL rows go in with COPY in batches and every table written is VACUUM
ANALYZEd: the planner, and the changelists' estimated counts, see the rows, and the visibility
map lets sync health's index-only scans skip the heap (autovacuum does both in production, in
its own time; it may be off on a development server). Elsewhere rows go in with bulk_create.
Never run it against a production database: it only adds rows, but many.
"""
from __future__ import annotations

import datetime
import json
import random
import time
import uuid
from decimal import Decimal
from typing import Any, Iterable, Iterator

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone
from lti_tool.models import LtiContext, LtiDeployment, LtiRegistration, LtiUser

from gradesync.models import Delivery, DeliveryStatus, ResyncJob, ResyncJobStatus, Result
from institutions.models import Course, DeploymentOwnership, Institution, LmsFamily, RegistrationProfile

STATUS_MIX = [
    (DeliveryStatus.SENT, 0.90),
    (DeliveryStatus.PENDING, 0.02),
    (DeliveryStatus.RETRYING, 0.02),
    (DeliveryStatus.REFUSED, 0.04),
    (DeliveryStatus.DEAD, 0.02),
]
REFUSALS = [
    (422, "Canvas refused: Allowed Attempts reached. Raise Allowed Attempts in Canvas, then resync this grade. "
          'LMS said: {"errors":[{"message":"The maximum number of allowed attempts has been reached for this submission"}]}'),
    (422, "Canvas refused: the user is not a student of this course in Canvas. Check the enrolment, then resync. "
          'LMS said: {"errors":[{"message":"User not a student in course"}]}'),
    (401, "Canvas refused: the course left this deployment's scope (moved to another sub-account). Deploy the tool "
          "where the course now is, launch once, then resync. LMS said: Access token not linked to a tool associated with this context"),
]
BATCH = 50_000


class Command(BaseCommand):
    help = "Seed results, deliveries and resync jobs in bulk to measure the admin changelists."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--rows", type=int, default=1_000_000, help="Results and deliveries to add.")
        parser.add_argument("--jobs", type=int, default=None, help="Finished resync jobs to add (default: --rows).")
        parser.add_argument("--courses", type=int, default=200, help="Courses per institution.")
        parser.add_argument("--learners", type=int, default=20_000, help="Learners per institution.")
        parser.add_argument("--seed", type=int, default=7)

    def handle(self, *args: Any, rows: int, jobs: int | None, courses: int, learners: int, seed: int, **options: Any) -> None:
        if rows < 1:
            raise CommandError("--rows must be positive")
        jobs = rows if jobs is None else jobs
        self.random = random.Random(seed)
        self.now = timezone.now()
        started = time.monotonic()
        tenants = [self._tenant(slug, name, courses, learners) for slug, name in
                   [("bench-north", "Bench North College"), ("bench-south", "Bench South University")]]
        self.stdout.write(f"tenants ready in {time.monotonic() - started:.1f} s")
        before = Result.objects.aggregate(m=Max("id"))["m"] or 0
        run = uuid.uuid4().hex[:8]
        self._insert(Result, self._results(tenants, rows, run))
        result_ids = list(Result.objects.filter(id__gt=before, source_ref__startswith=f"bench-{run}-").order_by("id").values_list("id", flat=True))
        self.stdout.write(f"{len(result_ids)} results in {time.monotonic() - started:.1f} s")
        self._insert(Delivery, self._deliveries(tenants, result_ids))
        self.stdout.write(f"{len(result_ids)} deliveries in {time.monotonic() - started:.1f} s")
        if jobs:
            self._insert(ResyncJob, self._jobs(tenants, jobs))
            self.stdout.write(f"{jobs} resync jobs in {time.monotonic() - started:.1f} s")
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                for model in (Result, Delivery, ResyncJob, LtiUser, LtiContext, Course):
                    cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
        self.stdout.write(self.style.SUCCESS(f"seeded in {time.monotonic() - started:.1f} s"))

    # --- tenants ------------------------------------------------------------------------------

    @transaction.atomic
    def _tenant(self, slug: str, name: str, course_count: int, learner_count: int) -> dict:
        institution, _ = Institution.objects.get_or_create(slug=slug, defaults={"name": name})
        registration, created = LtiRegistration.objects.get_or_create(
            name=f"{name} Canvas", defaults={
                "uuid": uuid.uuid4(), "issuer": f"https://{slug}.instructure.com", "client_id": f"{slug}-client",
                "auth_url": "https://sso.canvaslms.com/api/lti/authorize_redirect",
                "token_url": "https://sso.canvaslms.com/login/oauth2/token",
                "keyset_url": "https://sso.canvaslms.com/api/lti/security/jwks",
            },
        )
        if created:
            RegistrationProfile.objects.create(registration=registration, lms_family=LmsFamily.CANVAS)
        deployment, _ = LtiDeployment.objects.get_or_create(registration=registration, deployment_id=f"{slug}-deployment")
        DeploymentOwnership.objects.get_or_create(deployment=deployment, defaults={"institution": institution})
        have = Course.objects.filter(institution=institution).count()
        for index in range(have, course_count):
            context = LtiContext.objects.create(deployment=deployment, id_on_platform=f"{slug}-course-{index}",
                                                title=f"{name} course {index}")
            Course.objects.create(context=context, institution=institution, deployment=deployment, title=context.title)
        have = LtiUser.objects.filter(registration=registration).count()
        LtiUser.objects.bulk_create(
            [LtiUser(registration=registration, sub=f"{slug}-user-{i}", name=f"Learner {i} of {name}",
                     email=f"learner{i}@{slug}.example.edu") for i in range(have, learner_count)],
            batch_size=5000,
        )
        return {
            "institution": institution.pk, "registration": registration.pk, "deployment": deployment.pk,
            "courses": list(Course.objects.filter(institution=institution).values_list("pk", flat=True)),
            "learners": list(LtiUser.objects.filter(registration=registration).values_list("pk", flat=True)),
        }

    # --- rows -----------------------------------------------------------------------------------

    def _moments(self, count: int) -> Iterator[datetime.datetime]:
        """`count` moments of the last 30 days, oldest first: rows go in in time order, as they do in
        production, so ids and the table's pages follow time (and a day's updates touch a day's pages)."""
        ages = sorted((self.random.uniform(0, 30 * 86400) for _ in range(count)), reverse=True)
        return (self.now - datetime.timedelta(seconds=age) for age in ages)

    def _results(self, tenants: list[dict], count: int, run: str) -> Iterator[dict]:
        rnd = self.random
        for index, completed in enumerate(self._moments(count)):
            tenant = tenants[index % len(tenants)]
            course = rnd.choice(tenant["courses"])
            eligible = rnd.random() > 0.05
            activity = rnd.randrange(40)
            yield {
                "source_ref": f"bench-{run}-{index}", "lti_user_id": rnd.choice(tenant["learners"]), "course_id": course,
                "activity_key": str(activity), "activity_title": f"Activity {activity}", "resource_link_id": None,
                "score": Decimal(rnd.randrange(0, 100001)) / 100000, "completed_at": completed,
                "launch_role": "learner" if eligible else "instructor", "launched_course_id": course,
                "launch_deployment_id": tenant["deployment"], "link_graded": True, "is_eligible": eligible,
                "ineligible_reason": "" if eligible else "Learner in the course: Role at launch: Instructor.",
                "recorded_at": completed + datetime.timedelta(milliseconds=20),
            }

    def _deliveries(self, tenants: list[dict], result_ids: list[int]) -> Iterator[dict]:
        rnd = self.random
        statuses = [s for s, _ in STATUS_MIX]
        weights = [w for _, w in STATUS_MIX]
        for index, (result_id, recorded) in enumerate(zip(result_ids, self._moments(len(result_ids)))):
            tenant = tenants[index % len(tenants)]
            status = rnd.choices(statuses, weights)[0]
            sent = recorded + datetime.timedelta(seconds=rnd.lognormvariate(-0.5, 0.8)) if status == DeliveryStatus.SENT else None
            code, message = (None, "")
            if status == DeliveryStatus.REFUSED:
                code, message = rnd.choice(REFUSALS)
            elif status == DeliveryStatus.RETRYING:
                code, message = 503, "The LMS had an error; it is retried automatically. LMS said: Service Unavailable"
            elif status == DeliveryStatus.DEAD:
                code, message = 503, "Gave up after 72 h. Last: Service Unavailable"
            elif status == DeliveryStatus.SENT:
                code = 200
            updated = sent or recorded + datetime.timedelta(seconds=rnd.uniform(0, 600))
            yield {
                "result_id": result_id, "course_id": rnd.choice(tenant["courses"]), "institution_id": tenant["institution"],
                "registration_id": tenant["registration"], "deployment_id": tenant["deployment"],
                "lti_user_id": rnd.choice(tenant["learners"]), "resource_link_id": None, "line_item_id": None,
                "activity_key": str(rnd.randrange(40)), "score": Decimal(rnd.randrange(0, 100001)) / 100000,
                "status": status, "resync_job_id": None, "version": 1, "is_resync": rnd.random() < 0.05,
                "attempts": 1 if status == DeliveryStatus.SENT else rnd.randrange(1, 8),
                "next_attempt_at": recorded if status in (DeliveryStatus.PENDING, DeliveryStatus.RETRYING) else None,
                "claimed_at": None, "last_status_code": code, "last_message": message,
                "last_timestamp": sent, "recorded_at": recorded, "sent_at": sent, "created_at": recorded, "updated_at": updated,
            }

    def _jobs(self, tenants: list[dict], count: int) -> Iterator[dict]:
        rnd = self.random
        for index, created in enumerate(self._moments(count)):
            tenant = tenants[index % len(tenants)]
            planned = rnd.randrange(1, 500)
            yield {
                "institution_id": tenant["institution"], "course_id": rnd.choice(tenant["courses"]), "activity_key": "",
                "status": ResyncJobStatus.DONE, "estimated": planned, "planned": planned, "sent": planned,
                "requested_by_name": "bench", "created_at": created, "started_at": created,
                "planned_at": created, "finished_at": created + datetime.timedelta(seconds=30), "updated_at": created,
            }

    # --- insertion ------------------------------------------------------------------------------

    def _insert(self, model, rows: Iterable[dict]) -> None:
        fields = [f for f in model._meta.concrete_fields if not f.primary_key]

        def value(field, row: dict):
            if field.attname in row:
                return row[field.attname]
            return field.get_default()  # the declared default, "" for text, else None

        batch: list[dict] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= BATCH:
                self._write(model, fields, batch, value)
                batch = []
        if batch:
            self._write(model, fields, batch, value)

    @transaction.atomic
    def _write(self, model, fields, batch: list[dict], value) -> None:
        if connection.vendor != "postgresql":
            objects = [model(**{f.attname: value(f, row) for f in fields}) for row in batch]
            # Slower, and auto_now(_add) fields take the time of the insert: for trying the command out only.
            model.objects.bulk_create(objects, batch_size=2000)
            return
        table = connection.ops.quote_name(model._meta.db_table)
        columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
        json_fields = {f.attname for f in fields if f.get_internal_type() == "JSONField"}
        with connection.cursor() as cursor:
            with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in batch:
                    values = [value(f, row) for f in fields]
                    copy.write_row([
                        json.dumps(v) if f.attname in json_fields and v is not None else v for f, v in zip(fields, values)
                    ])
