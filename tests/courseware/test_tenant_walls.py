"""The tenant wall on the learner side: a launch from one institution reaches nothing of another.

Every courseware URL is tried from both sides (North's session on South's objects, South's on
North's): the answer is 404, never 403 (existence is not revealed), and nothing is written.
"""
from __future__ import annotations

import pytest
from django.urls import reverse

from courseware.models import ActivityKind, Attempt, AttemptAllowance, Launch
from gradesync.models import Delivery, ResyncJob, Result
from tests.conftest import sign_in_verified
from tests.courseware_factories import ActivityFactory

pytestmark = pytest.mark.django_db


def rows() -> dict[str, list]:
    """Everything a learner-side request could write, with the fields a write would change."""
    return {
        "attempts": list(Attempt.objects.order_by("pk").values_list("pk", "launch", "last_seen_at", "completed_at", "score", "answers")),
        "results": list(Result.objects.values_list("pk", flat=True)),
        "deliveries": list(Delivery.objects.values_list("pk", flat=True)),
        "allowances": list(AttemptAllowance.objects.values_list("pk", "attempts_allowed")),
        "resync_jobs": list(ResyncJob.objects.values_list("pk", flat=True)),
    }


@pytest.fixture
def reading():
    return ActivityFactory(slug="reading-walls", title="Reading behind the wall", kind=ActivityKind.READING)


@pytest.fixture
def tenants(client, launched, link_to, north_course, south_course, quiz, reading):
    """Each institution's course with a quiz link, a reading link and a learner who opened both."""
    sides = {}
    for name, course in (("north", north_course), ("south", south_course)):
        quiz_link, reading_link = link_to(quiz, course=course), link_to(reading, course=course)
        launch = launched(course)
        client.post(reverse("courseware:start", kwargs={"link_id": quiz_link.pk}))
        client.get(reverse("courseware:play", kwargs={"link_id": reading_link.pk}))  # opening a reading starts its clock
        sides[name] = {
            "course": course, "quiz_link": quiz_link, "reading_link": reading_link, "launch": launch,
            "quiz_attempt": Attempt.objects.get(launch=launch, activity=quiz),
            "reading_attempt": Attempt.objects.get(launch=launch, activity=reading),
        }
    assert Attempt.objects.count() == 4
    return sides


def _bind(client, launch: Launch) -> None:
    from courseware.sessions import LAUNCH_SESSION_KEY

    session = client.session
    session[LAUNCH_SESSION_KEY] = launch.pk
    session.save()


SIDES = [pytest.param("north", "south", id="north-session-on-south"), pytest.param("south", "north", id="south-session-on-north")]


def _requests(theirs):
    """(method, url, data) of every learner-side and instructor URL, aimed at the other institution's objects."""
    quiz, reading = theirs["quiz_link"].pk, theirs["reading_link"].pk
    quiz_attempt, reading_attempt = theirs["quiz_attempt"].pk, theirs["reading_attempt"].pk
    answers = {f"q-{q.pk}": "0" for q in theirs["quiz_link"].activity.questions.all()}
    return [
        ("get", reverse("courseware:play", kwargs={"link_id": quiz}), {}),
        ("get", reverse("courseware:play", kwargs={"link_id": reading}), {}),
        ("post", reverse("courseware:start", kwargs={"link_id": quiz}), {}),
        ("get", reverse("courseware:attempt", kwargs={"link_id": quiz, "attempt_id": quiz_attempt}), {}),
        ("post", reverse("courseware:submit", kwargs={"link_id": quiz, "attempt_id": quiz_attempt}), answers),
        ("post", reverse("courseware:presence", kwargs={"link_id": reading, "attempt_id": reading_attempt}), {}),
        ("get", reverse("courseware:grade_sync", args=[theirs["course"].pk]), {}),
        ("post", reverse("courseware:grade_sync", args=[theirs["course"].pk]), {}),
        ("get", reverse("courseware:grade_sync_progress", args=[theirs["course"].pk]), {}),
    ]


@pytest.mark.parametrize("role", ["learner", "instructor"])
@pytest.mark.parametrize("mine, theirs", SIDES)
def test_a_launch_reaches_nothing_of_another_institution(client, launched, tenants, mine, theirs, role):
    launched(tenants[mine]["course"], role=role, lti_user=tenants[mine]["launch"].lti_user)
    before = rows()

    for method, url, data in _requests(tenants[theirs]):
        response = getattr(client, method)(url, data)
        assert response.status_code == 404, (method, url, response.status_code)

    assert rows() == before


@pytest.mark.parametrize("mine, theirs", SIDES)
def test_another_institutions_attempt_under_my_own_link_is_not_found(client, tenants, mine, theirs):
    """The same LMS user (one registration serving both institutions) cannot reach their other attempts either."""
    _bind(client, tenants[mine]["launch"])
    my_quiz, my_reading = tenants[mine]["quiz_link"].pk, tenants[mine]["reading_link"].pk
    Attempt.objects.filter(pk__in=[tenants[theirs]["quiz_attempt"].pk, tenants[theirs]["reading_attempt"].pk]).update(
        lti_user=tenants[mine]["launch"].lti_user
    )
    before = rows()

    submit = client.post(reverse("courseware:submit", kwargs={"link_id": my_quiz, "attempt_id": tenants[theirs]["quiz_attempt"].pk}))
    seen = client.get(reverse("courseware:attempt", kwargs={"link_id": my_quiz, "attempt_id": tenants[theirs]["quiz_attempt"].pk}))
    ping = client.post(reverse("courseware:presence", kwargs={"link_id": my_reading, "attempt_id": tenants[theirs]["reading_attempt"].pk}))

    assert (submit.status_code, seen.status_code, ping.status_code) == (404, 404, 404)
    assert rows() == before


def test_an_attempt_of_another_link_is_not_found_under_this_one(client, tenants):
    """The quiz attempt submitted or pinged through the reading's link (and the other way round): 404, nothing written."""
    north = tenants["north"]
    _bind(client, north["launch"])
    before = rows()

    submit = client.post(reverse("courseware:submit", kwargs={"link_id": north["reading_link"].pk, "attempt_id": north["quiz_attempt"].pk}))
    seen = client.get(reverse("courseware:attempt", kwargs={"link_id": north["reading_link"].pk, "attempt_id": north["quiz_attempt"].pk}))
    ping = client.post(reverse("courseware:presence", kwargs={"link_id": north["quiz_link"].pk, "attempt_id": north["reading_attempt"].pk}))

    assert (submit.status_code, seen.status_code, ping.status_code) == (404, 404, 404)
    assert rows() == before


def test_another_learners_attempt_is_not_found(client, launched, tenants):
    north = tenants["north"]
    launched(north["course"])  # another learner of the same course
    before = rows()

    submit = client.post(reverse("courseware:submit", kwargs={"link_id": north["quiz_link"].pk, "attempt_id": north["quiz_attempt"].pk}))
    ping = client.post(reverse("courseware:presence", kwargs={"link_id": north["reading_link"].pk, "attempt_id": north["reading_attempt"].pk}))

    assert (submit.status_code, ping.status_code) == (404, 404)
    assert rows() == before


@pytest.mark.parametrize("mine, theirs", SIDES)
def test_the_schedule_cannot_limit_another_institutions_activity(client, launched, link_to, tenants, mine, theirs):
    only_theirs = ActivityFactory(slug=f"only-{theirs}", title="Theirs only", kind=ActivityKind.CUSTOM_QUIZ)
    link_to(only_theirs, course=tenants[theirs]["course"])
    launched(tenants[mine]["course"], role="instructor")
    before = rows()

    page = client.post(reverse("courseware:schedule"), {"activity": only_theirs.pk, "attempts_allowed": "5"})

    assert page.status_code == 404
    assert rows() == before
    assert "Theirs only" not in client.get(reverse("courseware:schedule")).content.decode()


def test_a_link_of_another_course_of_the_same_institution_still_plays_ineligible(client, launched, link_to, north_course, quiz):
    """Today's behaviour inside one institution: played, recorded, not eligible, and the page says why."""
    from tests.factories import CourseFactory

    sibling = CourseFactory(institution=north_course.institution, title="A+ at North")
    link = link_to(quiz, course=north_course)
    launched(sibling)

    page = client.get(reverse("courseware:play", kwargs={"link_id": link.pk}))
    started = client.post(reverse("courseware:start", kwargs={"link_id": link.pk}))

    assert (page.status_code, started.status_code) == (200, 302)
    attempt = Attempt.objects.get()
    assert (attempt.course, attempt.eligible) == (north_course, False)
    assert "launched from another course (A+ at North)" in client.get(reverse("courseware:play", kwargs={"link_id": link.pk})).content.decode()


def test_staff_logged_in_directly_still_open_any_institutions_link(client, staff_user, tenants):
    client.logout()  # no launch in this session
    sign_in_verified(client, staff_user(None, username="support-person"))

    north = client.get(reverse("courseware:play", kwargs={"link_id": tenants["north"]["quiz_link"].pk}))
    south = client.get(reverse("courseware:play", kwargs={"link_id": tenants["south"]["quiz_link"].pk}))

    assert (north.status_code, south.status_code) == (200, 200)
