"""The why page says one thing, scores read one way, and jobs you can watch (#14 items 4 and 5).

- The why page: the attempt the policy picks is "picked" (not "sent"), each row's next step is one
  of the page's next steps, an open delivery long past its next try is flagged overdue.
- Scores read "16 / 20 (80 %)" (the LMS's points and the percentage) on the why page, the delivery
  and result lists (with the activity's title) and the learner's page.
- Jobs: cancel says what it did (withdrawn / in flight / retrying) and the job is Cancelled at once;
  a job's counters and Done are written as its grades land, with no page open; an instructor's
  request is theirs (name, LMS user id) in the job and the audit trail, not "system".
"""
from __future__ import annotations

import datetime
import re
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from gradesync import resync, sender
from gradesync.display import score_text
from gradesync.models import Delivery, DeliveryStatus, ResyncJob, ResyncJobStatus
from institutions.models import AuditEntry, GradePolicy
from institutions.roles import READ_ONLY, SUPPORT

from .test_diagnostics import ACTIVITY, record, why_page, world  # noqa: F401 - `world` is a fixture

# --- One way to show a score --------------------------------------------------------------------


def test_a_score_reads_as_the_lms_points_and_the_percentage():
    assert score_text(Decimal("0.8"), 10) == "8 / 10 (80 %)"
    assert score_text(Decimal("0.875"), 20) == "17.5 / 20 (87.5 %)"
    assert score_text(Decimal("0.66667"), 3) == "2 / 3 (66.7 %)"
    assert score_text(Decimal("1"), None) == "100 %"  # no line item known: the percentage only
    assert score_text(None, 10) == "—"


# --- The why page says one thing ------------------------------------------------------------------


@pytest.mark.django_db
def test_the_picked_attempt_is_picked_by_the_policy_and_scores_read_in_points(world, client_for):
    record(world, score="0.9", completed_at=timezone.now() - datetime.timedelta(hours=1))
    record(world, score="0.4")
    Delivery.objects.update(status=DeliveryStatus.SENT, sent_at=timezone.now())
    body = why_page(client_for(SUPPORT), world).content.decode()
    assert "← picked by the policy" in body and "sent by the policy" not in body
    # The line item has 20 points: every score on the page says so, the same way.
    assert "18 / 20 (90 %)" in body and "8 / 20 (40 %)" in body
    assert "0.90000" not in body and "90%" not in body


@pytest.mark.django_db
def test_each_rows_next_step_is_one_of_the_pages_next_steps(world, client_for):
    """An older refused delivery, then the policy changes under the grade the LMS holds: the page says
    "resync" at the top and on the latest row, and the old row says it was replaced (not "resync")."""
    record(world, score="0.9", completed_at=timezone.now() - datetime.timedelta(hours=2))
    Delivery.objects.update(status=DeliveryStatus.REFUSED, last_status_code=422, last_message="Nope.")
    record(world, score="0.5", completed_at=timezone.now() - datetime.timedelta(hours=1))  # Highest: 0.9 again
    latest = Delivery.objects.latest("id")
    assert latest.score == Decimal("0.9")
    Delivery.objects.filter(pk=latest.pk).update(status=DeliveryStatus.SENT, sent_at=timezone.now())
    world.north.grade_policy = GradePolicy.MOST_RECENT  # changed without a resync
    world.north.save()

    response = why_page(client_for(SUPPORT), world)
    diagnosis = response.context["diagnosis"]
    rows = {row.delivery.pk: row for row in diagnosis.deliveries}
    assert diagnosis.next_steps[0] == rows[latest.pk].advice
    assert "but the policy now picks 10 / 20 (50 %)" in rows[latest.pk].advice and "resync this grade" in rows[latest.pk].advice
    for pk, row in rows.items():
        if pk != latest.pk:
            assert row.advice == f"Replaced by delivery #{latest.pk}, the latest: nothing to do on this one."
    failed_rule_steps = [rule.step for rule in diagnosis.rules if not rule.passed and rule.step]
    assert all(step in diagnosis.next_steps for step in failed_rule_steps)
    assert "Nothing to do" not in " ".join(diagnosis.next_steps)


@pytest.mark.django_db
def test_a_delivery_long_past_its_next_try_is_flagged_overdue(world, client_for):
    record(world)
    delivery = Delivery.objects.get()
    client = client_for(SUPPORT)

    Delivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.PENDING, next_attempt_at=timezone.now())
    fresh = why_page(client, world)
    assert not fresh.context["diagnosis"].overdue and "overdue" not in fresh.context["diagnosis"].verdict

    Delivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.RETRYING, next_attempt_at=timezone.now() - datetime.timedelta(minutes=12),
        last_status_code=503, last_message="Service Unavailable",
    )
    response = why_page(client, world)
    diagnosis = response.context["diagnosis"]
    assert diagnosis.overdue and diagnosis.verdict.startswith("Retrying, overdue:")
    assert "no worker or beat running?" in diagnosis.next_steps[0] and "12 minutes ago" in diagnosis.next_steps[0]
    assert diagnosis.deliveries[0].advice == diagnosis.next_steps[0]
    body = response.content.decode()
    assert f'<tr data-delivery="{delivery.pk}" class="overdue">' in body and '<strong class="overdue">overdue</strong>' in body


# --- Scores one way on the lists and the learner's page ----------------------------------------------


@pytest.mark.django_db
def test_lists_and_the_learner_page_show_the_activity_title_and_the_score_in_points(world, client_for):
    record(world, score="0.8")
    client = client_for(READ_ONLY)
    deliveries = client.get(reverse("admin:gradesync_delivery_changelist")).content.decode()
    results = client.get(reverse("admin:gradesync_result_changelist")).content.decode()
    learner = client.get(reverse("admin:lti_tool_ltiuser_change", args=[world.learner.pk])).content.decode()
    for page in (deliveries, results, learner):
        assert "16 / 20 (80 %)" in page
        assert "Quiz 7: subnetting" in page
    assert f'<td class="field-activity">{ACTIVITY}</td>' not in deliveries
    assert '<td class="field-activity">Quiz 7: subnetting</td>' in deliveries


# --- Jobs you can watch ------------------------------------------------------------------------------


def _job_with_rows(world, statuses: list[str]) -> ResyncJob:
    """A running job whose planning is done, with one delivery of each status given (other learners)."""
    from tests.courseware_factories import LtiUserFactory

    job = ResyncJob.objects.create(
        institution=world.north, course=world.course, status=ResyncJobStatus.RUNNING, requested_by_name="support-staff",
        planned=len(statuses), planned_at=timezone.now(), started_at=timezone.now(),
    )
    for status in statuses:
        learner = LtiUserFactory(registration=world.course.deployment.registration)
        Delivery.objects.create(
            result=_result_for(world, learner), course=world.course, institution=world.north,
            registration=world.course.deployment.registration, deployment=world.course.deployment, lti_user=learner,
            resource_link=world.link, activity_key=ACTIVITY, score=Decimal("0.5"), status=status, is_resync=True,
            resync_job=job, recorded_at=timezone.now(), next_attempt_at=timezone.now(),
            attempts=0 if status == DeliveryStatus.PENDING else 1,
            claimed_at=timezone.now() if status == DeliveryStatus.SENDING else None,
        )
    return job


def _result_for(world, learner):
    from gradesync.models import Result

    return Result.objects.create(
        source_ref=f"job-{learner.pk}", lti_user=learner, course=world.course, activity_key=ACTIVITY,
        score=Decimal("0.5"), completed_at=timezone.now(), is_eligible=True,
    )


@pytest.mark.django_db
def test_cancel_says_what_it_did_and_the_job_is_cancelled_at_once(world, client_for):
    job = _job_with_rows(world, [DeliveryStatus.PENDING, DeliveryStatus.PENDING, DeliveryStatus.SENDING,
                                 DeliveryStatus.RETRYING, DeliveryStatus.SENT])
    client = client_for(SUPPORT)

    response = client.post(reverse("admin:gradesync_resyncjob_cancel", args=[job.pk]), follow=True)

    body = response.content.decode()
    said = (f"Resync #{job.pk} cancelled: 2 queued grades withdrawn; 1 already in flight (it finishes and is counted); "
            "1 still retrying (the LMS has not taken it yet; it keeps retrying until sent or given up).")
    assert said in body
    job.refresh_from_db()
    assert job.status == ResyncJobStatus.CANCELLED and job.finished_at is not None
    assert said in job.message
    assert (job.sent, job.skipped) == (1, 2)
    assert Delivery.objects.filter(resync_job=job).count() == 3  # the two untouched rows are gone
    audit = AuditEntry.objects.get(action="resync.cancelled")
    assert audit.changes["withdrawn"] == [None, 2] and audit.changes["in_flight"] == [None, 1] and audit.changes["retrying"] == [None, 1]
    # The page shows it cancelled, with no way to cancel again and nothing "Running".
    page = client.get(reverse("admin:gradesync_resyncjob_change", args=[job.pk])).content.decode()
    assert "Cancelled" in page and "Running" not in page and "Cancel this resync" not in page
    # The grade in flight lands afterwards: counted on the cancelled job, which stays cancelled.
    in_flight = Delivery.objects.get(resync_job=job, status=DeliveryStatus.SENDING)
    Delivery.objects.filter(pk=in_flight.pk).update(status=DeliveryStatus.SENT, sent_at=timezone.now())
    sender.note_resync_landings({job.pk})
    job.refresh_from_db()
    assert (job.status, job.sent) == (ResyncJobStatus.CANCELLED, 2)


@pytest.mark.django_db
def test_pages_read_the_stored_counters_and_write_nothing(world, client_for, django_assert_num_queries):
    job = _job_with_rows(world, [DeliveryStatus.SENT, DeliveryStatus.PENDING])
    with django_assert_num_queries(0):
        progress = resync.polled_progress(job)
    assert (progress.sent, progress.status) == (0, "running")  # nothing has counted the sent one yet
    client = client_for(READ_ONLY)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        assert client.get(reverse("admin:gradesync_resyncjob_progress", args=[job.pk])).json()["sent"] == 0
        assert client.get(reverse("admin:gradesync_resyncjob_change", args=[job.pk])).status_code == 200
    assert not [q for q in captured if q["sql"].startswith("UPDATE") and "gradesync_resyncjob" in q["sql"]]


@pytest.mark.django_db
def test_the_last_grade_landing_writes_done_and_the_counters(world):
    job = _job_with_rows(world, [DeliveryStatus.SENT, DeliveryStatus.REFUSED, DeliveryStatus.SENDING])
    last = Delivery.objects.get(resync_job=job, status=DeliveryStatus.SENDING)
    sender.note_resync_landings({job.pk})  # the first two landed: counted (trailing, at most every 2 s)
    job.refresh_from_db()
    assert (job.status, job.sent, job.refused) == (ResyncJobStatus.RUNNING, 1, 1)
    Delivery.objects.filter(pk=last.pk).update(status=DeliveryStatus.SENT)
    sender.note_resync_landings({job.pk})  # within the 2 s, but the job's last grade: counted at once
    job.refresh_from_db()
    assert (job.status, job.sent, job.refused) == (ResyncJobStatus.DONE, 2, 1) and job.finished_at is not None


# --- Over HTTP against the sandbox Canvas: a worker sends, nobody looks, the job is done --------------------


@pytest.fixture
def _staff_roles():
    from django.apps import apps

    from institutions.roles import sync_staff_roles

    sync_staff_roles(apps)  # transactional tests flush the groups the migration made


@pytest.mark.django_db(transaction=True)
def test_a_jobs_counters_and_done_are_written_as_its_grades_land(live_server, two_institutions, staff_user, monkeypatch, _staff_roles):
    from .test_delivery import Classroom

    room = Classroom(live_server.url, two_institutions[0], "canvas")
    for student in room.connected.students:
        room.finish(room.launch(student), "0.75")
    queued: list[int] = []
    monkeypatch.setattr("gradesync.resync.jobs._queue_job", lambda job_id, countdown=None: None)
    monkeypatch.setattr("gradesync.resync.planning._enqueue_deliveries", lambda job_id, ids: queued.extend(ids))
    course = Delivery.objects.first().course
    job = resync.start_resync(scope=resync.ResyncScope(institution=two_institutions[0], course=course),
                              acting_user=staff_user(SUPPORT))
    assert resync.run_job(job.pk) == "planned"  # planned; its grades wait for a worker
    job.refresh_from_db()
    assert (job.status, job.planned, job.sent) == (ResyncJobStatus.RUNNING, 3, 0)

    sender.deliver(queued[0])  # a worker: holding Canvas's slot, it sends all three

    job.refresh_from_db()  # no page opened, no progress read
    assert (job.status, job.sent, job.refused, job.failed) == (ResyncJobStatus.DONE, 3, 0, 0)
    assert job.finished_at is not None
    assert [room.gradebook(s) for s in room.connected.students] == [pytest.approx(15)] * 3


@pytest.mark.django_db
def test_an_instructors_resync_is_theirs_not_the_systems(world, client_for, monkeypatch):
    monkeypatch.setattr("gradesync.resync.jobs._queue_job", lambda job_id, countdown=None: None)
    record(world)
    answer = resync.request_course_resync(course=world.course, instructor=world.learner)  # an instructor of this course
    assert answer.started
    job = ResyncJob.objects.get(pk=answer.job_id)
    who = "Ada Lovelace (instructor, LMS user id canvas-user-4242)"
    assert job.requested_by_name == who and job.requested_by_instructor == world.learner
    audit = AuditEntry.objects.get(action="resync.requested")
    assert audit.actor is None and audit.actor_name == who
    client = client_for(READ_ONLY)
    assert who in client.get(reverse("admin:gradesync_resyncjob_changelist")).content.decode()
    assert who in client.get(reverse("admin:gradesync_resyncjob_change", args=[job.pk])).content.decode()


@pytest.mark.django_db
def test_job_times_are_to_the_second(world, client_for):
    job = _job_with_rows(world, [DeliveryStatus.SENT])
    created = datetime.datetime(2025, 3, 4, 15, 5, 9, tzinfo=datetime.timezone.utc)
    ResyncJob.objects.filter(pk=job.pk).update(created_at=created)
    client = client_for(READ_ONLY)
    for url in (reverse("admin:gradesync_resyncjob_changelist"), reverse("admin:gradesync_resyncjob_change", args=[job.pk])):
        body = client.get(url).content.decode()
        assert re.search(r'<time datetime="2025-03-04T15:05:09Z" title="2025-03-04 15:05:09 UTC">2025-03-04 15:05:09 UTC</time>', body), url
