"""Resync planning: a job's grades planned in set-based batches of keys (the planning SQL), its continuation queued
when a time slice ends, and the fan-out that starts senders for each planned batch.

Planning writes the same outbox rows `ledger.plan_delivery(resync=True)` writes, a batch of
5,000 grades at a time in a handful of statements: the keys, one query that picks each key's
grade by the policy and its line item (`_targets`), and one INSERT … ON CONFLICT DO UPDATE per
partial unique constraint, so a pair that already has an open row gets the new grade in it, even
when a live grade opened that row a moment ago.
"""
from __future__ import annotations

import datetime
import json
import time
from decimal import Decimal
from typing import NamedTuple

from django.db import connection, transaction
from django.db.models import Case, Count, DecimalField, F, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone
from lti_tool.models import LtiLineItem, LtiResourceLink

from institutions.models import Course

from .. import line_items, queue, wakeups
from ..models import ACTIVE_JOB_STATUSES, OPEN_STATUSES, Delivery, DeliveryStatus, ResyncJob, ResyncJobStatus
from . import jobs
from .jobs import refresh_progress
from .scope import _LAST_SENT_SCORE, KEY_ORDER, Key, ResyncScope, _keys, _picked_results

BATCH_SIZE = 5000  # grades per transaction: ~0.6 s of work, one fan-out message
SLICE_SECONDS = 60.0  # one task runs at most this long, then queues its continuation


def run_job(job_id: int, *, slice_seconds: float = SLICE_SECONDS, batch_size: int = BATCH_SIZE) -> str:
    """Plan a job's grades batch after batch; queue the continuation when the time slice ends.

    Idempotent: returns quietly when the job is gone, finished, cancelled, or already planned.
    Two planners of one job (a resumed job whose first message turns up after all) take turns
    batch by batch on the job's row lock.
    """
    now = timezone.now()
    ResyncJob.objects.filter(pk=job_id, status=ResyncJobStatus.QUEUED).update(
        status=ResyncJobStatus.RUNNING, started_at=now, updated_at=now
    )
    deadline = time.monotonic() + slice_seconds
    try:
        while True:
            outcome = _plan_one_batch(job_id, batch_size=batch_size)
            if outcome != "more":
                break
            if time.monotonic() >= deadline:
                jobs._queue_job(job_id)
                return "continues"
    except Exception as error:  # noqa: BLE001 - the job must stand visibly as failed, with the reason
        ResyncJob.objects.filter(pk=job_id, status__in=ACTIVE_JOB_STATUSES).update(
            status=ResyncJobStatus.FAILED, finished_at=timezone.now(), message=f"Planning failed: {error!r}"[:2000]
        )
        raise
    job = ResyncJob.objects.filter(pk=job_id).first()
    if job is not None:
        refresh_progress(job)
    return outcome


def _plan_one_batch(job_id: int, *, batch_size: int) -> str:
    """Plan the next batch of keys after the job's cursor. Returns "more", "planned" or why it stopped.

    `updated_at` records the planner's last progress, or the sweeper's restart
    (`sweep_resync_jobs` reads it); the sweeper's note is cleared once planning moves again.
    """
    with transaction.atomic():
        job = (
            ResyncJob.objects.select_for_update(of=("self",))
            .select_related("institution", "course", "lti_user", "delivery")
            .filter(pk=job_id)
            .first()
        )
        if job is None:
            return "gone"
        if job.status != ResyncJobStatus.RUNNING or job.planned_at is not None:
            return f"not running ({job.status})"
        scope = ResyncScope.of_job(job)
        cursor = tuple(job.cursor) if job.cursor else None
        keys = _keys(scope, after=cursor, limit=batch_size)
        now = timezone.now()
        if not keys:
            ResyncJob.objects.filter(pk=job.pk).update(planned_at=now, updated_at=now, message="")
            return "planned"
        ids = _plan_keys(job, scope, keys)
        ResyncJob.objects.filter(pk=job.pk).update(
            cursor=list(keys[-1]), planned=F("planned") + len(ids), skipped=F("skipped") + len(keys) - len(ids),
            updated_at=now, message="",
        )
        transaction.on_commit(lambda: _enqueue_deliveries(job_id, ids), robust=True)
    return "more"


def _enqueue_deliveries(job_id: int, ids: list[int]) -> None:
    """One message per batch: a resync worker fans it out, so planning does not wait on the broker per grade."""
    if ids:
        queue.send(queue.QUEUE_RESYNC_DELIVERIES, [job_id, ids], queue="resync")


def fan_out(job_id: int, ids: list[int]) -> int:
    """Start senders for a planned batch, unless the job was cancelled meanwhile; returns the tasks queued.

    Each LMS of the batch gets as many tasks as it allows requests in flight (wakeups.wake_senders),
    not a task per row: 5,000 tasks per batch cost the workers a round trip each for nothing, and,
    queued in key order, kept an institution's other LMSes idle behind the first one's rows
    (bench_resync --deliver).
    """
    if ResyncJob.objects.filter(pk=job_id, status=ResyncJobStatus.CANCELLED).exists():
        return 0
    rows = Delivery.objects.filter(pk__in=ids).order_by("pk").values_list("pk", "registration_id", "is_resync")
    return wakeups.wake_senders(list(rows))


class _Target(NamedTuple):
    """The policy's result for one key, and where its grade goes."""

    result_id: int
    course_id: int
    lti_user_id: int
    activity_key: str
    score: Decimal
    resource_link_id: int | None
    line_item_id: int | None
    line_items: int | None  # how many of the course's line items match (the activity, or the result's link)
    institution_id: int
    registration_id: int
    deployment_id: int
    last_sent: Decimal | None  # read only for an only-changed job


def _targets(scope: ResyncScope, keys: list[Key], policy: str) -> list[_Target]:
    """One query for a batch: the policy's result per key and the line item line_items.line_item_for would pick.

    That is the line item bound to the result's link, else the newest whose resource_id is the
    activity; a result without a link matches on the activity only, never on "any line item with
    no link".
    """
    of_course = LtiLineItem.objects.filter(context_id=OuterRef("course__context_id")).order_by("-id")
    bound = of_course.filter(resource_link_id=OuterRef("resource_link_id"))  # no link, no match: NULL = NULL is not true
    of_activity = of_course.filter(resource_id=OuterRef("activity_key"))
    candidates = of_course.filter(Q(resource_id=OuterRef("activity_key")) | Q(resource_link_id=OuterRef("resource_link_id")))
    last_sent = _LAST_SENT_SCORE if scope.only_changed else Value(None, output_field=DecimalField())
    rows = _picked_results(scope, keys, policy).annotate(
        target_line_item=Coalesce(Subquery(bound.values("id")[:1]), Subquery(of_activity.values("id")[:1])),
        line_items=Subquery(candidates.order_by().values("context_id").annotate(n=Count("id")).values("n")),
        last_sent=last_sent,
    )
    return [_Target(*row) for row in rows.values_list(
        "pk", *KEY_ORDER, "score", "resource_link_id", "target_line_item", "line_items", "course__institution_id",
        "course__deployment__registration_id", "course__deployment_id", "last_sent",
    )]


def _plan_keys(job: ResyncJob, scope: ResyncScope, keys: list[Key]) -> list[int]:
    """The set-based plan of one batch: the rows plan_delivery(resync=True) writes, in a few statements.

    Returns the ids of the deliveries written (new, or open ones brought up to the policy's grade);
    the batch's other keys are skipped.
    """
    batch = set(keys)
    chosen: dict[tuple, _Target] = {}
    several_line_items: set[tuple[int, str, int | None]] = set()
    for target in _targets(scope, keys, job.institution.grade_policy):
        if (target.course_id, target.lti_user_id, target.activity_key) not in batch:
            continue  # a grade recorded since the keys were read: the next batch, or a live sync, has it
        if scope.only_changed and target.last_sent == target.score:
            continue
        if (target.line_items or 0) > 1:
            several_line_items.add((target.course_id, target.activity_key, target.resource_link_id))
        if target.line_item_id is not None:
            pair: tuple = ("line item", target.line_item_id, target.lti_user_id)
        elif target.resource_link_id is not None:
            pair = ("link", target.resource_link_id, target.lti_user_id)
        else:
            pair = ("activity", target.course_id, target.activity_key, target.lti_user_id)
        # Two activities feeding one LMS column: it holds one grade; the first in key order wins.
        chosen.setdefault(pair, target)
    _warn_several_line_items(several_line_items)
    return _write_deliveries(job, list(chosen.values()), timezone.now())


def _warn_several_line_items(found: set[tuple[int, str, int | None]]) -> None:
    """The live path's SyncWarning "duplicate_line_items" (line_items.line_item_for writes it) for each
    (course, activity, link) that several line items match."""
    if not found:
        return
    courses = Course.objects.in_bulk({course_id for course_id, _, _ in found})
    links = LtiResourceLink.objects.in_bulk({link_id for _, _, link_id in found if link_id is not None})
    for course_id, activity_key, link_id in found:
        line_items.line_item_for(courses[course_id], activity_key, links.get(link_id))


_OPEN_SQL = "status IN ({})".format(", ".join(f"'{status.value}'" for status in OPEN_STATUSES))
# The conflict targets name the partial unique constraints on Delivery (one open row per pair).
_ON_LINE_ITEM = f"(line_item_id, lti_user_id) WHERE {_OPEN_SQL} AND line_item_id IS NOT NULL"
_ON_UNBOUND_LINK = f"(resource_link_id, lti_user_id) WHERE {_OPEN_SQL} AND line_item_id IS NULL"
_ROW_COLUMNS = [  # with their PostgreSQL types
    ("result_id", "bigint"), ("course_id", "bigint"), ("lti_user_id", "bigint"), ("activity_key", "text"),
    ("score", "numeric"), ("resource_link_id", "bigint"), ("line_item_id", "bigint"), ("institution_id", "bigint"),
    ("registration_id", "bigint"), ("deployment_id", "bigint"),
]
_SAME_FOR_ALL = [  # every other NOT NULL column too: Django's defaults are not the database's
    "status", "version", "is_resync", "attempts", "last_message", "next_attempt_at", "recorded_at", "created_at",
    "updated_at", "resync_job_id", "answer_lost",
]


def _write_deliveries(job: ResyncJob, targets: list[_Target], now: datetime.datetime) -> list[int]:
    """Write each target's delivery as plan_delivery(resync=True) does; returns their ids.

    One INSERT … ON CONFLICT DO UPDATE per partial unique constraint: a pair with an open row gets
    the new grade (version bumped, pending again unless a worker is sending it), any other pair a
    new row. A live grade committing the same pair meanwhile is waited for, then updated, never
    duplicated. Rows for neither a line item nor a link have no constraint to lean on: their open
    rows are looked up by (course, learner, activity) first.
    """
    ids: list[int] = []
    unkeyed = [t for t in targets if t.line_item_id is None and t.resource_link_id is None]
    if unkeyed:
        updated = _replan_unkeyed(job, unkeyed, now)
        ids += updated.values()
        targets = [t for t in targets if (t.course_id, t.lti_user_id, t.activity_key) not in updated]
    for conflict, part in (
        (_ON_LINE_ITEM, [t for t in targets if t.line_item_id is not None]),
        (_ON_UNBOUND_LINK, [t for t in targets if t.line_item_id is None]),
    ):
        if part:
            ids += _upsert(job, part, now, conflict)
    return ids


def _upsert(job: ResyncJob, targets: list[_Target], now: datetime.datetime, conflict: str) -> list[int]:
    ops = connection.ops
    table = ops.quote_name(Delivery._meta.db_table)
    stamp = ops.adapt_datetimefield_value(now)
    same = [DeliveryStatus.PENDING.value, 1, True, 0, "", stamp, stamp, stamp, stamp, job.pk, False]
    rows = [
        (t.result_id, t.course_id, t.lti_user_id, t.activity_key, ops.adapt_decimalfield_value(t.score, 6, 5),
         t.resource_link_id, t.line_item_id, t.institution_id, t.registration_id, t.deployment_id)
        for t in targets
    ]
    upsert = (
        f"INSERT INTO {table} ({', '.join([name for name, _ in _ROW_COLUMNS] + _SAME_FOR_ALL)}) {{rows}} "
        f"ON CONFLICT {conflict} DO UPDATE SET result_id = excluded.result_id, score = excluded.score, "
        f"version = {table}.version + 1, is_resync = excluded.is_resync, recorded_at = excluded.recorded_at, "
        f"next_attempt_at = excluded.next_attempt_at, resync_job_id = excluded.resync_job_id, "
        f"updated_at = excluded.updated_at, "
        f"status = CASE WHEN {table}.status = 'sending' THEN 'sending' ELSE 'pending' END "
        f"RETURNING id"
    )
    # (WHERE true: SQLite's parser needs it before ON CONFLICT; PostgreSQL does not mind.)
    constants = ", ".join(["%s"] * len(same))
    ids: list[int] = []
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The rows as one JSON parameter: binding thousands of scalars (or arrays) cost more than the insert.
            names = [name for name, _ in _ROW_COLUMNS]
            record = ", ".join(f"{name} {kind}" for name, kind in _ROW_COLUMNS)
            cursor.execute(
                upsert.format(rows=f"SELECT *, {constants} FROM json_to_recordset(%s::json) AS r({record}) WHERE true"),
                same + [json.dumps([dict(zip(names, row)) for row in rows], default=str)],
            )
            ids += [row[0] for row in cursor.fetchall()]
        else:
            one = "(" + ", ".join(["%s"] * len(_ROW_COLUMNS)) + ")"
            for start in range(0, len(rows), 500):  # SQLite's limit on bound parameters
                part = rows[start:start + 500]
                cursor.execute(
                    upsert.format(rows=f"SELECT *, {constants} FROM (VALUES {', '.join([one] * len(part))}) WHERE true"),
                    same + [value for row in part for value in row],
                )
                ids += [row[0] for row in cursor.fetchall()]
    return ids


def _replan_unkeyed(job: ResyncJob, targets: list[_Target], now: datetime.datetime) -> dict[Key, int]:
    """Open rows for neither a line item nor a link get the new grade; returns {key: delivery id} of those updated."""
    wanted = {(t.course_id, t.lti_user_id, t.activity_key): t for t in targets}
    open_rows = Delivery.objects.select_for_update().filter(
        status__in=OPEN_STATUSES, line_item__isnull=True, resource_link__isnull=True,
        course_id__in={t.course_id for t in targets}, lti_user_id__in={t.lti_user_id for t in targets},
        activity_key__in={t.activity_key for t in targets},
    )
    updated: dict[Key, int] = {}
    for pk, *key in open_rows.order_by("id").values_list("pk", *KEY_ORDER):
        target = wanted.get(tuple(key))
        if target is None or tuple(key) in updated:
            continue
        Delivery.objects.filter(pk=pk).update(
            result_id=target.result_id, score=target.score, version=F("version") + 1, is_resync=True,
            recorded_at=now, next_attempt_at=now, resync_job=job, updated_at=now,
            status=Case(When(status=DeliveryStatus.SENDING, then=Value(DeliveryStatus.SENDING.value)),
                        default=Value(DeliveryStatus.PENDING.value)),
        )
        updated[tuple(key)] = pk
    return updated
