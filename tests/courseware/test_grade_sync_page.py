"""The instructor's grade sync page: their own course only, each cell's state, and "Resync this course"."""
from __future__ import annotations

import datetime
import itertools
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from gradesync import resync
from gradesync.models import Delivery, DeliveryStatus, ResyncJob, ResyncJobStatus, Result
from institutions.models import AuditEntry
from tests.courseware_factories import ActivityFactory, LtiUserFactory

pytestmark = pytest.mark.django_db
_refs = itertools.count(1)


@pytest.fixture(autouse=True)
def _no_lms(monkeypatch):
    """Deliveries planned here stay queued: these tests are about the page, not the LMS."""
    monkeypatch.setattr("gradesync.resync.planning._enqueue_deliveries", lambda job_id, ids: None)


def _graded(course, learner, activity, score: str, *, status: str | None = DeliveryStatus.SENT, message: str = "", eligible=True):
    result = Result.objects.create(
        source_ref=f"page-{next(_refs)}", lti_user=learner, course=course, activity_key=str(activity.pk),
        activity_title=activity.title, score=Decimal(score), completed_at=timezone.now(), launch_role="learner",
        is_eligible=eligible, ineligible_reason="" if eligible else "Dates: completed after the course ended",
    )
    if status is not None:
        Delivery.objects.create(
            result=result, course=course, institution=course.institution, registration=course.deployment.registration,
            deployment=course.deployment, lti_user=learner, activity_key=str(activity.pk), score=result.score,
            status=status, last_message=message, recorded_at=timezone.now(),
        )
    return result


@pytest.fixture
def graded_north(north_course, south_course, quiz, link_to):
    """North: Ada sent, Ben refused by Canvas, Cy pending; a second quiz that Cy took after the end date.
    South: a learner of its own, who must never appear on North's page."""
    link_to(quiz, course=north_course)
    lab = ActivityFactory(slug="vlan-lab", title="VLAN lab")
    link_to(lab, course=north_course)
    registration = north_course.deployment.registration
    ada, ben, cy = (LtiUserFactory(registration=registration, name=n) for n in ("Ada Lovelace", "Ben Nevis", "Cy Young"))
    _graded(north_course, ada, quiz, "0.8")
    _graded(north_course, ben, quiz, "0.6", status=DeliveryStatus.REFUSED,
            message="Raise Allowed Attempts in Canvas. LMS said: The maximum number of allowed attempts has been reached")
    _graded(north_course, cy, quiz, "0.5", status=DeliveryStatus.RETRYING)
    _graded(north_course, cy, lab, "1.0", status=None, eligible=False)
    south_quiz = ActivityFactory(slug="south-quiz", title="South's own quiz")
    link_to(south_quiz, course=south_course)
    zed = LtiUserFactory(registration=south_course.deployment.registration, name="Zed South")
    _graded(south_course, zed, south_quiz, "0.9")
    return north_course


def test_an_instructor_launch_without_an_activity_shows_the_link_on_schedule(client, launched, north_course):
    launched(north_course, role="instructor")
    page = client.get(reverse("courseware:schedule")).content.decode()
    assert f'href="{reverse("courseware:grade_sync", args=[north_course.pk])}"' in page and "Grade sync for this course" in page


def test_the_grid_shows_each_students_state_in_their_own_course_only(client, launched, graded_north):
    launched(graded_north, role="instructor")
    response = client.get(reverse("courseware:grade_sync", args=[graded_north.pk]))
    assert response.status_code == 200
    assert "X-Frame-Options" not in response.headers  # framed in the LMS
    grid = response.context["grid"]
    assert [title for _key, title in grid.activities] == ["OSI model quiz", "VLAN lab"]
    assert [(row.learner, [c.label for c in row.cells]) for row in grid.rows] == [
        ("Ada Lovelace", ["Sent 80%", "—"]),
        ("Ben Nevis", ["Refused by the LMS (60%)", "—"]),
        ("Cy Young", ["Pending 50%", "Not synced"]),
    ]
    body = response.content.decode()
    assert "The maximum number of allowed attempts has been reached" in body
    assert "Dates: completed after the course ended" in body
    assert "Zed South" not in body and "South&#x27;s own quiz" not in body
    assert 'id="resync-button"' in body


def test_another_course_is_not_found_and_cannot_be_resynced(client, launched, graded_north, south_course):
    launched(graded_north, role="instructor")
    other = reverse("courseware:grade_sync", args=[south_course.pk])
    assert client.get(other).status_code == 404
    assert client.post(other).status_code == 404
    assert client.get(reverse("courseware:grade_sync_progress", args=[south_course.pk])).status_code == 404
    assert not ResyncJob.objects.exists()


def test_learners_and_direct_visitors_are_refused(client, launched, graded_north):
    url = reverse("courseware:grade_sync", args=[graded_north.pk])
    assert client.get(url).status_code == 403
    launched(graded_north, role="learner")
    assert client.get(url).status_code == 403
    assert client.post(url).status_code == 403 and not ResyncJob.objects.exists()


def test_resync_this_course_once_per_ten_minutes(client, launched, graded_north, clock, django_capture_on_commit_callbacks):
    instructor = launched(graded_north, role="instructor")
    url = reverse("courseware:grade_sync", args=[graded_north.pk])

    with django_capture_on_commit_callbacks(execute=True):  # the planning task, run eagerly
        started = client.post(url)

    assert started.status_code == 200
    assert "Resync started: 3 grades will be sent to the LMS again." in started.content.decode()
    job = ResyncJob.objects.get()
    assert (job.course, job.requested_by_instructor, job.planned) == (graded_north, instructor.lti_user, 3)
    assert Delivery.objects.filter(resync_job=job, is_resync=True).count() == 3
    assert AuditEntry.objects.filter(action="resync.requested", object_id=str(job.pk)).exists()
    progress = client.get(reverse("courseware:grade_sync_progress", args=[graded_north.pk])).json()
    assert (progress["status"], progress["planned"], progress["active"]) == ("running", 3, True)

    # Still running: the page says so, and a second request is refused.
    again = client.post(url)
    assert again.status_code == 429 and "once every 10 minutes" in again.content.decode()
    assert ResyncJob.objects.count() == 1

    # The grades land; ten minutes pass; the next resync is allowed.
    Delivery.objects.filter(resync_job=job).update(status=DeliveryStatus.SENT)
    resync.count_progress(job.pk)  # what the sender queues when a job's grades land
    clock.advance(9 * 60)
    page = client.get(url).content.decode()
    assert "Done" in page and "You can resync again at" in page and 'id="resync-button"' not in page
    assert client.post(url).status_code == 429
    clock.advance(61)
    assert 'id="resync-button"' in client.get(url).content.decode()
    assert client.post(url).status_code == 200
    assert ResyncJob.objects.count() == 2


def test_a_course_resync_by_support_blocks_the_instructors_until_it_finishes(client, launched, graded_north, staff_user):
    from institutions.roles import SUPPORT

    resync.start_resync(
        scope=resync.ResyncScope(institution=graded_north.institution, course=graded_north), acting_user=staff_user(SUPPORT)
    )
    launched(graded_north, role="instructor")
    refused = client.post(reverse("courseware:grade_sync", args=[graded_north.pk]))
    assert refused.status_code == 409
    assert "A resync of this scope is already queued or running" in refused.content.decode()
    assert ResyncJob.objects.filter(status=ResyncJobStatus.QUEUED).count() == 1  # the worker has not started it yet
