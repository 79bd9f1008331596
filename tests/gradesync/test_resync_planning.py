"""Resync planning without an LMS: the set-based batch planner writes what `ledger.plan_delivery`
would (the policy's grade, the same line item, one open delivery per pair, the duplicate line
item warning), and the beat sweeper unblocks jobs whose planner died."""
from __future__ import annotations

import datetime
import itertools
from decimal import Decimal

import pytest
from django.db import models
from django.utils import timezone
from lti_tool.models import LtiLineItem, LtiResourceLink, LtiUser

from gradesync import line_items, resync
from gradesync.models import OPEN_STATUSES, Delivery, DeliveryStatus, ResyncJob, ResyncJobStatus, Result, SyncWarning
from gradesync.policy import policy_result
from institutions.models import AuditEntry, GradePolicy
from institutions.roles import SUPPORT
from tests.factories import CourseFactory

pytestmark = pytest.mark.django_db

_refs = itertools.count()
NOW = timezone.now()


class Course:
    """A course of the first institution with three learners, links and line items as a test lays them out."""

    def __init__(self, institution) -> None:
        self.course = CourseFactory(institution=institution)
        registration = self.course.deployment.registration
        self.learners = [LtiUser.objects.create(registration=registration, sub=f"learner-{next(_refs)}") for _ in range(3)]

    def link(self) -> LtiResourceLink:
        return LtiResourceLink.objects.create(context=self.course.context, id_on_platform=f"link-{next(_refs)}")

    def line_item(self, resource_id: str, *, link: LtiResourceLink | None = None, label: str = "") -> LtiLineItem:
        n = next(_refs)
        return LtiLineItem.objects.create(
            context=self.course.context, url=f"https://lms.example/line_items/{n}", label=label or f"Column {n}",
            maximum_score=10, resource_id=resource_id, resource_link=link,
        )

    def result(self, learner, key: str, score: str, *, minutes_ago: float, link=None, eligible: bool = True) -> Result:
        return Result.objects.create(
            source_ref=f"ref-{next(_refs)}", lti_user=learner, course=self.course, activity_key=key, resource_link=link,
            score=Decimal(score), completed_at=NOW - datetime.timedelta(minutes=minutes_ago), is_eligible=eligible,
        )


@pytest.fixture
def north(two_institutions) -> Course:
    return Course(two_institutions[0])


def _plan(monkeypatch, django_capture_on_commit_callbacks, course: Course, **job_fields) -> tuple[ResyncJob, list[int]]:
    """Plan a course-wide job to the end; returns the job and the delivery ids handed to the fan-out."""
    fanned: list[int] = []
    monkeypatch.setattr("gradesync.resync.planning._enqueue_deliveries", lambda job_id, ids: fanned.extend(ids))
    monkeypatch.setattr("gradesync.resync.jobs._queue_job", lambda job_id, countdown=None: None)
    job = ResyncJob.objects.create(
        institution=course.course.institution, course=course.course, requested_by_name="test", **job_fields
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert resync.run_job(job.pk, batch_size=2) == "planned"  # several batches
    job.refresh_from_db()
    return job, fanned


def _open(course: Course) -> list[Delivery]:
    return list(Delivery.objects.filter(course=course.course, status__in=OPEN_STATUSES).order_by("id"))


@pytest.mark.parametrize("policy", [GradePolicy.HIGHEST, GradePolicy.MOST_RECENT])
def test_the_batch_plan_sends_the_policys_grade_to_the_line_item_the_live_path_picks(
    policy, north, two_institutions, monkeypatch, django_capture_on_commit_callbacks
):
    institution = north.course.institution
    institution.grade_policy = policy
    institution.save()
    quiz1_link, quiz4_link = north.link(), north.link()
    bound = north.line_item("quiz1", link=quiz1_link, label="Quiz 1")
    north.line_item("quiz1", label="Quiz 1 (again)")  # a second column for quiz1: support is warned
    quiz2 = north.line_item("quiz2")
    north.line_item("other")  # another activity's column, bound to no link: never a match for quiz3
    links = {"quiz1": quiz1_link, "quiz2": None, "quiz3": None, "quiz4": quiz4_link}
    for learner in north.learners:
        for key, link in links.items():
            north.result(learner, key, "0.9", minutes_ago=60, link=link)
            north.result(learner, key, "0.5", minutes_ago=30, link=link)
            north.result(learner, key, "0.9", minutes_ago=45, link=link)  # a tie on score: the later one wins
            north.result(learner, key, "1.0", minutes_ago=10, link=link, eligible=False)
    Course(two_institutions[1]).result(north.learners[0], "quiz1", "0.7", minutes_ago=5)  # not this course

    job, fanned = _plan(monkeypatch, django_capture_on_commit_callbacks, north)

    deliveries = _open(north)
    assert (job.planned, job.skipped, len(deliveries)) == (12, 0, 12)
    assert sorted(fanned) == [d.pk for d in deliveries]
    expected_line_item = {"quiz1": bound.pk, "quiz2": quiz2.pk, "quiz3": None, "quiz4": None}
    for delivery in deliveries:
        chosen = policy_result(course_id=north.course.pk, lti_user_id=delivery.lti_user_id,
                               activity_key=delivery.activity_key, policy=policy)
        assert (delivery.result_id, delivery.score) == (chosen.pk, chosen.score)
        assert chosen.score == (Decimal("0.5") if policy == GradePolicy.MOST_RECENT else Decimal("0.9"))
        assert delivery.line_item_id == expected_line_item[delivery.activity_key]
        live = line_items.line_item_for(north.course, delivery.activity_key, links[delivery.activity_key])
        assert delivery.line_item_id == (live.pk if live else None)
        assert delivery.resource_link_id == (links[delivery.activity_key].pk if links[delivery.activity_key] else None)
        assert (delivery.status, delivery.version, delivery.is_resync, delivery.resync_job_id) == (
            DeliveryStatus.PENDING, 1, True, job.pk
        )
        assert (delivery.institution_id, delivery.registration_id) == (
            institution.pk, north.course.deployment.registration_id
        )
    warnings = SyncWarning.objects.filter(course=north.course, kind="duplicate_line_items")
    assert [(w.activity_key, "Quiz 1, Quiz 1 (again)" in w.message or "Quiz 1 (again), Quiz 1" in w.message)
            for w in warnings] == [("quiz1", True)]


def test_the_duplicate_line_items_warning_is_recorded_by_the_planner_itself(
    north, monkeypatch, django_capture_on_commit_callbacks
):
    north.line_item("quiz1", label="Quiz 1")
    north.line_item("quiz1", label="Quiz 1 (copy)")
    north.result(north.learners[0], "quiz1", "0.8", minutes_ago=5)
    SyncWarning.objects.all().delete()  # whatever recording wrote: the resync must find it again

    _plan(monkeypatch, django_capture_on_commit_callbacks, north)

    warning = SyncWarning.objects.get(course=north.course, activity_key="quiz1", kind="duplicate_line_items")
    assert warning.message.startswith("2 LMS line items in this course point at one activity")


def test_a_result_without_a_link_never_goes_to_another_activitys_unbound_column(
    north, monkeypatch, django_capture_on_commit_callbacks
):
    north.line_item("quiz9", label="Quiz 9")  # unbound, another activity
    north.result(north.learners[0], "quiz1", "0.8", minutes_ago=5)

    _plan(monkeypatch, django_capture_on_commit_callbacks, north)

    (delivery,) = _open(north)
    assert (delivery.line_item_id, delivery.resource_link_id) == (None, None)  # looked up on the LMS by quiz1 when sent
    assert not SyncWarning.objects.exists()


def test_open_deliveries_get_the_new_grade_and_no_second_open_row_appears(
    north, monkeypatch, django_capture_on_commit_callbacks
):
    link, link4 = north.link(), north.link()
    item = north.line_item("quiz1", link=link)
    first, second, third = north.learners
    for learner in north.learners:
        north.result(learner, "quiz1", "0.6", minutes_ago=5, link=link)
    quiz3 = north.result(first, "quiz3", "0.7", minutes_ago=5)  # no link, no line item
    quiz4 = north.result(first, "quiz4", "0.4", minutes_ago=5, link=link4)  # a link with no line item yet

    def row(learner, result, status, **fields):
        return Delivery.objects.create(
            result=result, course=north.course, institution=north.course.institution,
            registration_id=north.course.deployment.registration_id, deployment=north.course.deployment,
            lti_user=learner, activity_key=result.activity_key, score=Decimal("0.1"), status=status,
            recorded_at=NOW, **fields,
        )

    a_result = Result.objects.filter(lti_user=first, activity_key="quiz1").get()
    sending = row(first, a_result, DeliveryStatus.SENDING, line_item=item, resource_link=link, version=3)
    retrying = row(second, a_result, DeliveryStatus.RETRYING, line_item=item, resource_link=link, attempts=2)
    sent = row(third, a_result, DeliveryStatus.SENT, line_item=item, resource_link=link)
    unkeyed = row(first, quiz3, DeliveryStatus.PENDING)
    unbound = row(first, quiz4, DeliveryStatus.RETRYING, resource_link=link4)

    job, fanned = _plan(monkeypatch, django_capture_on_commit_callbacks, north)

    assert (job.planned, job.skipped) == (5, 0)
    opened = _open(north)
    assert len(opened) == 5 and len({(d.line_item_id, d.resource_link_id, d.lti_user_id, d.activity_key) for d in opened}) == 5
    assert sorted(fanned) == [d.pk for d in opened]
    for before, status, version in (
        (sending, DeliveryStatus.SENDING, 4),  # its worker sees the new version and sends again
        (retrying, DeliveryStatus.PENDING, 2),
        (unkeyed, DeliveryStatus.PENDING, 2),
        (unbound, DeliveryStatus.PENDING, 2),
    ):
        after = Delivery.objects.get(pk=before.pk)
        assert (after.status, after.version, after.is_resync, after.resync_job_id) == (status, version, True, job.pk)
        assert after.score != Decimal("0.1")
    sent.refresh_from_db()
    assert (sent.status, sent.resync_job_id) == (DeliveryStatus.SENT, None)  # settled: a new row carries the resync
    assert Delivery.objects.filter(lti_user=third, status=DeliveryStatus.PENDING, line_item=item).count() == 1


def test_two_activities_feeding_one_column_send_one_grade(north, monkeypatch, django_capture_on_commit_callbacks):
    link = north.link()
    north.line_item("quizA", link=link)
    north.result(north.learners[0], "quizA", "0.8", minutes_ago=5, link=link)
    north.result(north.learners[0], "quizB", "0.3", minutes_ago=5, link=link)

    job, _ = _plan(monkeypatch, django_capture_on_commit_callbacks, north)

    (delivery,) = _open(north)
    assert (delivery.activity_key, delivery.score, job.planned, job.skipped) == ("quizA", Decimal("0.8"), 1, 1)


def test_only_changed_skips_the_grades_the_lms_already_holds(north, monkeypatch, django_capture_on_commit_callbacks):
    link = north.link()
    item = north.line_item("quiz1", link=link)
    same, other = north.learners[:2]
    for learner in (same, other):
        result = north.result(learner, "quiz1", "0.8", minutes_ago=5, link=link)
        Delivery.objects.create(
            result=result, course=north.course, institution=north.course.institution,
            registration_id=north.course.deployment.registration_id, deployment=north.course.deployment,
            lti_user=learner, line_item=item, resource_link=link, activity_key="quiz1", recorded_at=NOW,
            score=Decimal("0.8") if learner == same else Decimal("0.4"), status=DeliveryStatus.SENT,
        )
    assert resync.preview_resync(resync.ResyncScope(
        institution=north.course.institution, course=north.course, only_changed=True
    )).grades == 1

    job, _ = _plan(monkeypatch, django_capture_on_commit_callbacks, north, only_changed=True)

    assert [d.lti_user_id for d in _open(north)] == [other.pk]
    assert (job.planned, job.skipped) == (1, 1)


# --- The sweeper for dead planners --------------------------------------------------------------


@pytest.fixture
def queued_jobs(monkeypatch):
    queued: list[int] = []
    monkeypatch.setattr("gradesync.resync.jobs._queue_job", lambda job_id, countdown=None: queued.append(job_id))
    return queued


def _job(course: Course, *, status=ResyncJobStatus.RUNNING, idle_minutes: float, **fields) -> ResyncJob:
    job = ResyncJob.objects.create(
        institution=course.course.institution, course=course.course, status=status, requested_by_name="support",
        estimated=100, **fields,
    )
    ResyncJob.objects.filter(pk=job.pk).update(updated_at=timezone.now() - datetime.timedelta(minutes=idle_minutes))
    job.refresh_from_db()
    return job


def test_a_stalled_planner_is_restarted_once_and_a_busy_one_left_alone(north, two_institutions, queued_jobs):
    stalled = _job(north, idle_minutes=16, planned=40, cursor=[north.course.pk, 1, "quiz1"])
    busy = _job(Course(two_institutions[0]), idle_minutes=3)
    never_started = _job(Course(two_institutions[1]), status=ResyncJobStatus.QUEUED, idle_minutes=20)

    assert resync.sweep_resync_jobs() == {"restarted": 2, "failed": 0, "done": 0}
    assert sorted(queued_jobs) == sorted([stalled.pk, never_started.pk])
    stalled.refresh_from_db()
    assert stalled.status == ResyncJobStatus.RUNNING and stalled.message.startswith("Planning stalled: no progress since")
    busy.refresh_from_db()
    assert (busy.status, busy.message) == (ResyncJobStatus.RUNNING, "")
    # Later sweeps give a restart time to work: no second message for the same job.
    assert resync.sweep_resync_jobs()["restarted"] == 0
    assert resync.sweep_resync_jobs(now=timezone.now() + datetime.timedelta(minutes=30))["restarted"] == 1
    assert queued_jobs[2:] == [busy.pk]  # by then the busy one has stalled too


def test_a_planner_that_stays_dead_fails_its_job_and_frees_the_scope(north, queued_jobs, staff_user, monkeypatch):
    job = _job(north, idle_minutes=16, planned=40)
    resync.sweep_resync_jobs()  # restarted; its worker dies again
    later = timezone.now() + datetime.timedelta(minutes=46)

    assert resync.sweep_resync_jobs(now=later) == {"restarted": 0, "failed": 1, "done": 0}

    job.refresh_from_db()
    assert job.status == ResyncJobStatus.FAILED and job.finished_at == later
    assert "Stopped by the system" in job.message and "40 of about 100 grades were planned" in job.message
    assert "Start the resync again" in job.message
    assert not AuditEntry.objects.filter(object_id=str(job.pk)).exists()  # the system did it, not a person
    # The scope is free: support can start it again.
    monkeypatch.setattr("gradesync.resync.jobs.preview_resync", lambda scope: resync.ResyncPreview(grades=0))
    again = resync.start_resync(
        scope=resync.ResyncScope(institution=north.course.institution, course=north.course),
        acting_user=staff_user(SUPPORT),
    )
    assert again.pk != job.pk and again.status == ResyncJobStatus.QUEUED


def test_a_restarted_planner_that_moves_again_is_not_failed(
    north, queued_jobs, monkeypatch, django_capture_on_commit_callbacks
):
    north.result(north.learners[0], "quiz1", "0.8", minutes_ago=5)
    job = _job(north, status=ResyncJobStatus.QUEUED, idle_minutes=20)
    resync.sweep_resync_jobs()
    monkeypatch.setattr("gradesync.resync.planning._enqueue_deliveries", lambda job_id, ids: None)
    with django_capture_on_commit_callbacks(execute=True):
        assert resync.run_job(job.pk) == "planned"  # the restarted task ran
    job.refresh_from_db()
    assert (job.status, job.planned, job.message) == (ResyncJobStatus.RUNNING, 1, "")

    assert resync.sweep_resync_jobs(now=timezone.now() + datetime.timedelta(minutes=50))["failed"] == 0
    job.refresh_from_db()
    assert job.status == ResyncJobStatus.RUNNING  # planned: its delivery is still on its way


def test_the_sweeper_finishes_jobs_whose_deliveries_have_settled(
    north, queued_jobs, monkeypatch, django_capture_on_commit_callbacks
):
    north.result(north.learners[0], "quiz1", "0.8", minutes_ago=5)
    job, _ = _plan(monkeypatch, django_capture_on_commit_callbacks, north)
    assert job.status == ResyncJobStatus.RUNNING
    Delivery.objects.filter(resync_job=job).update(status=DeliveryStatus.SENT)

    assert resync.sweep_resync_jobs()["done"] == 1
    job.refresh_from_db()
    assert (job.status, job.sent) == (ResyncJobStatus.DONE, 1)


def test_the_planners_insert_writes_every_column_the_database_requires():
    """The batch INSERT names its columns: a NOT NULL column it leaves out (Django's defaults are not
    the database's) would fail every resync, as `answer_lost` did until it was added there."""
    written = {name for name, _ in resync.planning._ROW_COLUMNS} | set(resync.planning._SAME_FOR_ALL)
    required = {
        field.column for field in Delivery._meta.concrete_fields
        if not field.null and not field.primary_key and field.db_default is models.NOT_PROVIDED
    }
    assert required <= written, required - written
