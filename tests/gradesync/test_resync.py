"""Resync at every scope against the sandbox LMS (Canvas, Moodle): jobs, progress, cancel, refusals,
the grade policy preview, and who may do what in the admin."""
from __future__ import annotations

import datetime
import json

import pytest
from django.contrib.admin.models import LogEntry
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from courseware.models import Activity, ActivityKind
from gradesync import resync
from gradesync.models import Delivery, DeliveryStatus, ResyncJob, ResyncJobStatus
from institutions.models import AuditEntry, GradePolicy
from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT
from sandbox_lms import api as sandbox
from tests import lms

from .test_delivery import Classroom, _refs

pytestmark = pytest.mark.django_db(transaction=True)


class TwoQuizClassroom(Classroom):
    """A Classroom with a second graded quiz, so that one activity can be resynced apart from another."""

    def __init__(self, base_url: str, institution, profile: str) -> None:
        super().__init__(base_url, institution, profile)
        self.first = (self.quiz, self.sandbox_link, self.sandbox_line_item)
        self.quiz2 = Activity.objects.create(
            slug=f"quiz-{next(_refs)}", title="Quiz: routing", kind=ActivityKind.CUSTOM_QUIZ, default_points=10
        )
        done = lms.deep_link(lms.browser(), self.connected, {self.quiz2.pk: {"graded": True, "points": 20}})
        assert done.status_code == 200, done.text[:500]
        link2 = self.connected.course.resource_links.order_by("-id").first()
        self.second = (self.quiz2, link2, link2.line_items.get())

    def use(self, which) -> None:
        self.quiz, self.sandbox_link, self.sandbox_line_item = which

    def grade_all(self) -> None:
        """Every student: two attempts at each quiz (0.9 then 0.5, so Highest and Most Recent differ)."""
        for which in (self.first, self.second):
            self.use(which)
            for student in self.connected.students:
                launch = self.launch(student)
                self.finish(launch, "0.9", minutes_ago=60)
                self.finish(launch, "0.5", minutes_ago=30)
        self.use(self.first)

    def cell(self, which, student):
        self.use(which)
        try:
            return self.gradebook(student)
        finally:
            self.use(self.first)

    def wipe_gradebook(self) -> None:
        """Someone zeroes every cell in the LMS by hand; a resync must put the policy's grades back."""
        for which in (self.first, self.second):
            for cell in sandbox.grades(line_item=which[2]).values():
                cell.result = 0
                cell.save()
        sandbox.forget_caches()

    @property
    def course(self):
        from institutions.models import Course

        return Course.objects.get(context__id_on_platform=self.connected.course.context_id)


@pytest.fixture(params=["canvas", "moodle"])
def classroom(request, live_server, two_institutions):
    room = TwoQuizClassroom(live_server.url, two_institutions[0], request.param)
    room.grade_all()
    return room


@pytest.fixture(autouse=True)
def _staff_roles():
    """Transactional tests flush the groups the migration made: make them again."""
    from django.apps import apps

    from institutions.roles import sync_staff_roles

    sync_staff_roles(apps)


@pytest.fixture
def support(staff_user):
    return staff_user(SUPPORT)


def _run(scope: resync.ResyncScope, user) -> ResyncJob:
    job = resync.start_resync(scope=scope, acting_user=user)  # eager Celery: planned and delivered on commit
    job.refresh_from_db()
    return job


HIGH, LOW = 18.0, 10.0  # 0.9 and 0.5 of 20 points


def test_a_course_resync_puts_the_policys_grades_back_in_the_lms(classroom, support):
    classroom.wipe_gradebook()
    job = _run(resync.ResyncScope(institution=classroom.connected.institution, course=classroom.course), support)
    assert job.status == ResyncJobStatus.DONE
    assert (job.estimated, job.planned, job.sent, job.refused, job.failed, job.skipped) == (6, 6, 6, 0, 0, 0)
    for which in (classroom.first, classroom.second):
        assert [classroom.cell(which, s) for s in classroom.connected.students] == [pytest.approx(HIGH)] * 3
    assert Delivery.objects.filter(resync_job=job, is_resync=True).count() == 6


def _cells(classroom) -> dict[str, list]:
    return {
        name: [classroom.cell(which, s) for s in classroom.connected.students]
        for name, which in (("first", classroom.first), ("second", classroom.second))
    }


def test_one_delivery_resync_restores_that_grade_only(classroom, support):
    classroom.wipe_gradebook()
    student = classroom.connected.students[1]
    delivery = Delivery.objects.filter(lti_user__sub=student.sub, activity_key=str(classroom.quiz.pk)).latest("id")
    job = _run(resync.ResyncScope.of_delivery(delivery), support)
    assert (job.status, job.planned, job.sent) == (ResyncJobStatus.DONE, 1, 1)
    assert _cells(classroom) == {"first": [0, pytest.approx(HIGH), 0], "second": [0, 0, 0]}


def test_one_learner_in_a_course(classroom, support):
    classroom.wipe_gradebook()
    learner = Delivery.objects.filter(lti_user__sub=classroom.connected.students[0].sub).first().lti_user
    job = _run(resync.ResyncScope(institution=classroom.connected.institution, course=classroom.course, lti_user=learner), support)
    assert (job.planned, job.sent) == (2, 2)
    assert _cells(classroom) == {"first": [pytest.approx(HIGH), 0, 0], "second": [pytest.approx(HIGH), 0, 0]}


def test_one_activity_in_a_course(classroom, support):
    classroom.wipe_gradebook()
    scope = resync.ResyncScope(
        institution=classroom.connected.institution, course=classroom.course, activity_key=str(classroom.quiz2.pk)
    )
    job = _run(scope, support)
    assert (job.planned, job.sent) == (3, 3)
    assert _cells(classroom) == {"first": [0, 0, 0], "second": [pytest.approx(HIGH)] * 3}


def test_a_date_range_resyncs_only_grades_completed_in_it(classroom, support):
    classroom.wipe_gradebook()
    # Student 0 finished both quizzes last week; the others an hour ago.
    from gradesync.models import Result

    Result.objects.filter(lti_user__sub=classroom.connected.students[0].sub).update(
        completed_at=timezone.now() - datetime.timedelta(days=7)
    )
    scope = resync.ResyncScope(
        institution=classroom.connected.institution, course=classroom.course,
        completed_from=timezone.now() - datetime.timedelta(days=1), completed_until=timezone.now(),
    )
    assert resync.preview_resync(scope).grades == 4
    job = _run(scope, support)
    assert (job.planned, job.sent) == (4, 4)
    assert _cells(classroom) == {"first": [0, pytest.approx(HIGH), pytest.approx(HIGH)], "second": [0, pytest.approx(HIGH), pytest.approx(HIGH)]}


def test_an_institution_resync_covers_its_courses_and_no_other_institutions(live_server, two_institutions, support):
    north = TwoQuizClassroom(live_server.url, two_institutions[0], "canvas")
    south = TwoQuizClassroom(live_server.url, two_institutions[1], "moodle")
    north.grade_all()
    south.grade_all()
    north.wipe_gradebook()
    south.wipe_gradebook()
    preview = resync.preview_resync(resync.ResyncScope(institution=two_institutions[0]))
    assert preview.grades == 6 and [(lms.family, lms.grades) for lms in preview.lmses] == [("Canvas", 6)]
    job = _run(resync.ResyncScope(institution=two_institutions[0]), support)
    assert (job.status, job.planned, job.sent) == (ResyncJobStatus.DONE, 6, 6)
    assert _cells(north) == {"first": [pytest.approx(HIGH)] * 3, "second": [pytest.approx(HIGH)] * 3}
    assert _cells(south) == {"first": [0, 0, 0], "second": [0, 0, 0]}


def test_a_resync_sends_the_current_policy_and_canvas_does_not_count_it_as_a_submission(live_server, two_institutions, support):
    room = TwoQuizClassroom(live_server.url, two_institutions[0], "canvas")
    room.grade_all()
    for _quiz, _link, line_item in (room.first, room.second):
        line_item.allowed_attempts = 1  # every student has used their one submission
        line_item.save()
    sandbox.forget_caches()
    two_institutions[0].grade_policy = GradePolicy.MOST_RECENT
    two_institutions[0].save()
    job = _run(resync.ResyncScope(institution=two_institutions[0], course=room.course), support)
    assert (job.sent, job.refused) == (6, 0)
    assert _cells(room) == {"first": [pytest.approx(LOW)] * 3, "second": [pytest.approx(LOW)] * 3}
    posted = json.loads(room.score_posts()[-1].request_body)
    assert posted["https://canvas.instructure.com/lti/submission"] == {"new_submission": False}


def test_progress_counts_sent_and_refused_from_the_deliveries(live_server, two_institutions, support):
    room = TwoQuizClassroom(live_server.url, two_institutions[0], "moodle")
    room.grade_all()
    sandbox.enrol(course=room.connected.course, user=room.connected.students[0], role=sandbox.Role.INSTRUCTOR)
    sandbox.forget_caches()  # Moodle now refuses student 0's grades
    job = _run(resync.ResyncScope(institution=two_institutions[0], course=room.course), support)
    progress = resync.refresh_progress(job)
    assert (progress.status, progress.planned, progress.sent, progress.refused, progress.failed, progress.percent) == (
        "done", 6, 4, 2, 0, 100
    )


def test_pages_polling_a_running_job_read_the_counters_its_landing_grades_wrote(classroom, support, django_assert_num_queries):
    from gradesync import sender

    job = _run(resync.ResyncScope(institution=classroom.connected.institution, course=classroom.course), support)
    total = job.sent
    last = Delivery.objects.filter(resync_job=job).latest("id")
    Delivery.objects.filter(pk=last.pk).update(status=DeliveryStatus.PENDING)  # still being sent
    ResyncJob.objects.filter(pk=job.pk).update(status=ResyncJobStatus.RUNNING, finished_at=None, sent=total - 1)
    job.refresh_from_db()
    with django_assert_num_queries(0):  # every tab, every second: the stored counters, never a recount
        assert resync.polled_progress(job).sent == total - 1
    Delivery.objects.filter(pk=last.pk).update(status=DeliveryStatus.SENT)
    sender.note_resync_landings({job.pk})  # what the sender does once the grade has landed
    job.refresh_from_db()
    progress = resync.polled_progress(job)
    assert (progress.sent, progress.status) == (total, "done")


def test_a_second_identical_job_is_refused_while_one_is_active(classroom, support, monkeypatch):
    monkeypatch.setattr("gradesync.resync.jobs._queue_job", lambda job_id, countdown=None: None)  # the worker has not started it
    scope = resync.ResyncScope(institution=classroom.connected.institution, course=classroom.course)
    first = resync.start_resync(scope=scope, acting_user=support)
    with pytest.raises(resync.ResyncRefused, match=rf"already queued or running \(#{first.pk}, asked by support-staff"):
        resync.start_resync(scope=scope, acting_user=support)
    # The database itself refuses it, whoever writes the row.
    with pytest.raises(IntegrityError), transaction.atomic():
        ResyncJob.objects.create(institution=scope.institution, course=scope.course)
    # Another scope is fine; so is the same scope once the first has finished.
    resync.start_resync(scope=resync.ResyncScope(institution=scope.institution), acting_user=support)
    ResyncJob.objects.filter(pk=first.pk).update(status=ResyncJobStatus.DONE)
    assert resync.start_resync(scope=scope, acting_user=support).pk != first.pk


def test_cancel_stops_planning_and_withdraws_what_no_worker_picked_up(classroom, support, monkeypatch):
    monkeypatch.setattr("gradesync.resync.jobs._queue_job", lambda job_id, countdown=None: None)
    sent_ids: list[int] = []
    monkeypatch.setattr("gradesync.resync.planning._enqueue_deliveries", lambda job_id, ids: sent_ids.extend(ids))  # queued, not yet consumed
    classroom.wipe_gradebook()
    job = resync.start_resync(
        scope=resync.ResyncScope(institution=classroom.connected.institution, course=classroom.course), acting_user=support
    )
    assert resync.run_job(job.pk, slice_seconds=0, batch_size=2) == "continues"  # one batch planned
    assert len(sent_ids) == 2 and Delivery.objects.filter(resync_job=job).count() == 2

    report = resync.cancel_resync(job=job, acting_user=support)

    assert (report.withdrawn, report.in_flight, report.retrying) == (2, 0, 0)
    job.refresh_from_db()
    assert (job.status, job.planned, job.skipped) == (ResyncJobStatus.CANCELLED, 2, 2)
    assert resync.run_job(job.pk, batch_size=2) == "not running (cancelled)"  # the continuation does nothing
    from gradesync import sender

    assert [sender.deliver(pk) for pk in sent_ids] == ["not claimed", "not claimed"]
    assert _cells(classroom) == {"first": [0, 0, 0], "second": [0, 0, 0]}  # nothing was sent
    assert AuditEntry.objects.filter(action="resync.cancelled", object_id=str(job.pk)).exists()


# --- In the admin -----------------------------------------------------------------------------

RESYNC_URL = "/admin/gradesync/resyncjob/resync/"


def test_support_previews_confirms_and_watches_a_course_resync(classroom, client_for):
    client = client_for(SUPPORT)
    classroom.wipe_gradebook()
    course = classroom.course
    form = client.get(RESYNC_URL, {"institution": course.institution_id, "course": course.pk})
    assert form.status_code == 200
    data = {"institution": course.institution_id, "course": course.pk}
    confirm = client.post(RESYNC_URL, data)
    body = confirm.content.decode()
    assert "<strong>6</strong> grades will be sent again" in body and "Yes, resync 6 grades" in body
    assert f"{classroom.connected.registration.name} (" in body and not ResyncJob.objects.exists()

    done = client.post(RESYNC_URL, {**data, "confirmed": "yes"})

    job = ResyncJob.objects.get()
    assert done.status_code == 302 and done.url == reverse("admin:gradesync_resyncjob_change", args=[job.pk])
    page = client.get(done.url).content.decode()
    assert 'id="resync-progress"' in page and "Done" in page
    progress = client.get(reverse("admin:gradesync_resyncjob_progress", args=[job.pk])).json()
    assert {k: progress[k] for k in ("status", "planned", "sent", "refused", "failed", "percent")} == {
        "status": "done", "planned": 6, "sent": 6, "refused": 0, "failed": 0, "percent": 100
    }
    assert _cells(classroom) == {"first": [pytest.approx(HIGH)] * 3, "second": [pytest.approx(HIGH)] * 3}
    assert LogEntry.objects.filter(object_id=str(job.pk), user=client.user).exists()
    audit = AuditEntry.objects.get(action="resync.requested")
    assert audit.actor == client.user and audit.institution == course.institution and audit.changes["grades"] == [None, 6]


def test_a_duplicate_request_from_the_admin_says_why(classroom, client_for, monkeypatch):
    monkeypatch.setattr("gradesync.resync.jobs._queue_job", lambda job_id, countdown=None: None)
    client = client_for(SUPPORT)
    data = {"institution": classroom.connected.institution.pk, "course": classroom.course.pk, "confirmed": "yes"}
    assert client.post(RESYNC_URL, data).status_code == 302
    again = client.post(RESYNC_URL, data, follow=True)
    assert "A resync of this scope is already queued or running" in again.content.decode()
    assert ResyncJob.objects.count() == 1


def test_the_delivery_actions_open_the_resync_form_for_each_scope(classroom, client_for):
    client = client_for(SUPPORT)
    delivery = Delivery.objects.first()
    for action, expected in [
        ("resync_delivery", f"delivery={delivery.pk}"),
        ("resync_learner", f"lti_user={delivery.lti_user_id}"),
        ("resync_activity", f"activity_key={delivery.activity_key}"),
        ("resync_course", f"course={delivery.course_id}"),
    ]:
        response = client.post("/admin/gradesync/delivery/", {"action": action, "_selected_action": [delivery.pk]})
        assert response.status_code == 302 and response.url.startswith(RESYNC_URL) and expected in response.url


def test_the_policy_page_counts_what_a_change_would_change_and_resyncs_it(classroom, client_for):
    client = client_for(SUPPORT)
    institution = classroom.connected.institution
    url = reverse("admin:institutions_institution_grade_policy", args=[institution.pk])
    preview = resync.preview_policy_change(institution=institution, policy=GradePolicy.MOST_RECENT)
    assert (preview.grades, preview.changed) == (6, 6)  # 0.9 was sent; Most Recent picks 0.5
    assert resync.preview_policy_change(institution=institution, policy=GradePolicy.HIGHEST).changed == 0
    page = client.get(url).content.decode()
    assert 'id="policy-changed">6</strong> of 6 grades' in page and "Change and resync the affected grades" in page

    response = client.post(url, {"grade_policy": GradePolicy.MOST_RECENT, "resync_affected": "on"})

    job = ResyncJob.objects.get()
    assert response.status_code == 302 and response.url == reverse("admin:gradesync_resyncjob_change", args=[job.pk])
    assert job.only_changed and (job.status, job.planned, job.sent) == (ResyncJobStatus.DONE, 6, 6)
    assert _cells(classroom) == {"first": [pytest.approx(LOW)] * 3, "second": [pytest.approx(LOW)] * 3}
    assert AuditEntry.objects.filter(action="grade_policy.changed").count() == 1
    assert AuditEntry.objects.filter(action="resync.requested", object_id=str(job.pk)).exists()
    # Nothing differs any more: the preview says so.
    assert resync.preview_policy_change(institution=institution, policy=GradePolicy.MOST_RECENT).changed == 0


def test_changing_the_policy_without_resync_changes_nothing_in_the_lms(classroom, client_for):
    client = client_for(SUPPORT)
    institution = classroom.connected.institution
    url = reverse("admin:institutions_institution_grade_policy", args=[institution.pk])
    assert client.post(url, {"grade_policy": GradePolicy.MOST_RECENT}).status_code == 302
    assert not ResyncJob.objects.exists()
    assert _cells(classroom)["first"] == [pytest.approx(HIGH)] * 3


@pytest.mark.parametrize("role,allowed", [(SUPPORT, True), (INTEGRATION, False), (READ_ONLY, False)])
def test_who_may_resync_and_change_the_policy(role, allowed, client_for, two_institutions, monkeypatch):
    monkeypatch.setattr("gradesync.resync.jobs._queue_job", lambda job_id, countdown=None: None)
    client = client_for(role)
    north = two_institutions[0]
    job = ResyncJob.objects.create(institution=north, status=ResyncJobStatus.RUNNING, requested_by_name="someone")
    expected = 200 if allowed else 403
    # Everyone reads the jobs and their progress.
    assert client.get("/admin/gradesync/resyncjob/").status_code == 200
    assert client.get(reverse("admin:gradesync_resyncjob_change", args=[job.pk])).status_code == 200
    assert client.get(reverse("admin:gradesync_resyncjob_progress", args=[job.pk])).json()["status"] == "running"
    # Only Support resyncs, cancels and changes the policy, crafted POSTs included.
    assert client.get(RESYNC_URL).status_code == expected
    started = client.post(RESYNC_URL, {"institution": two_institutions[1].pk, "confirmed": "yes"})
    assert started.status_code == (302 if allowed else 403)
    cancelled = client.post(reverse("admin:gradesync_resyncjob_cancel", args=[job.pk]))
    assert cancelled.status_code == (302 if allowed else 403)
    job.refresh_from_db()
    assert job.status == (ResyncJobStatus.CANCELLED if allowed else ResyncJobStatus.RUNNING)
    policy_url = reverse("admin:institutions_institution_grade_policy", args=[north.pk])
    assert client.get(policy_url).status_code == expected
    changed = client.post(policy_url, {"grade_policy": GradePolicy.MOST_RECENT, "resync_affected": "on"})
    assert changed.status_code == (302 if allowed else 403)
    north.refresh_from_db()
    assert north.grade_policy == (GradePolicy.MOST_RECENT if allowed else GradePolicy.HIGHEST)
    # Support: the running one and the South resync; the policy change affected no grade, so it made no job.
    assert ResyncJob.objects.count() == (2 if allowed else 1)
    assert ("Cancel this resync" in client.get(reverse("admin:gradesync_resyncjob_change", args=[job.pk])).content.decode()) is False
    assert ("Resync grades" in client.get("/admin/gradesync/resyncjob/").content.decode()) == allowed
