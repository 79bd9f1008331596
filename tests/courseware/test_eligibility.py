"""Whose attempts count for a course: recorded always, eligible only for a learner launched from it."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from courseware.models import Attempt
from gradesync.models import Result

from tests.conftest import sign_in_verified
from tests.factories import CourseFactory

from .test_quiz import take

pytestmark = pytest.mark.django_db


def test_a_direct_login_attempt_is_recorded_not_eligible(client, staff_user, link_to, quiz):
    link = link_to(quiz)
    sign_in_verified(client, staff_user(None, username="support-person"))

    page = take(client, link, right=2)

    reason = "No LTI launch from this course: the session was started by a direct login."
    assert reason in page.content.decode()
    attempt = Attempt.objects.get()
    assert (attempt.eligible, attempt.ineligible_reason, attempt.lti_user, attempt.launch) == (False, reason, None, None)
    assert attempt.auth_user.username == "support-person"
    result = Result.objects.get()
    assert (result.score, result.launch_role, result.lti_user, result.is_eligible) == (Decimal("0.5"), "", None, False)


def test_a_logged_in_user_who_is_not_staff_cannot_play(client, django_user_model, link_to, quiz):
    link = link_to(quiz)
    client.force_login(django_user_model.objects.create_user(username="visitor", password="pw"))

    assert client.get(reverse("courseware:play", kwargs={"link_id": link.pk})).status_code == 403


def test_a_test_user_sees_the_content_and_is_recorded_not_eligible(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    launched(north_course, role="test_user")

    page = take(client, link, right=4)

    assert "4 of 4 correct" in page.content.decode()
    assert "Student view (test user): never synced." in page.content.decode()
    attempt = Attempt.objects.get()
    assert (attempt.eligible, attempt.ineligible_reason) == (False, "Student view (test user): never synced.")
    result = Result.objects.get()
    assert (result.launch_role, result.is_eligible) == ("test_user", False)


def test_a_test_user_is_held_to_the_attempt_limit_like_a_student(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    launched(north_course, role="test_user")
    take(client, link, right=4)

    again = client.post(reverse("courseware:start", kwargs={"link_id": link.pk}))

    assert again.status_code == 403


def test_an_instructor_previews_without_a_limit_and_is_not_synced(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    launched(north_course, role="instructor")

    take(client, link, right=1)
    page = take(client, link, right=2)

    assert "2 of 4 correct" in page.content.decode()
    assert list(Attempt.objects.values_list("eligible", "ineligible_reason")) == [
        (False, "Only learners' results are synced."),
        (False, "Only learners' results are synced."),
    ]
    assert not Result.objects.filter(is_eligible=True).exists()


@pytest.fixture
def other_north_course(north_course):
    """A second course of the same institution (another institution's links are not found: test_tenant_walls.py)."""
    return CourseFactory(institution=north_course.institution, title="Security+ at North")


def test_a_session_launched_from_another_course_plays_but_is_not_eligible(client, launched, link_to, north_course, other_north_course, quiz):
    north_link = link_to(quiz, course=north_course)
    launch = launched(other_north_course)  # a learner's session from North's other course opens this link

    page = take(client, north_link, right=3)

    reason = "The session was launched from another course (Security+ at North), not this one."
    assert reason in page.content.decode()
    attempt = Attempt.objects.get()
    assert (attempt.course, attempt.eligible, attempt.ineligible_reason) == (north_course, False, reason)
    result = Result.objects.get()
    assert (result.course, result.launched_course, result.is_eligible) == (north_course, other_north_course, False)
    assert result.lti_user == launch.lti_user


def test_attempts_and_limits_are_per_course(client, launched, link_to, north_course, south_course, quiz):
    """The same quiz in two institutions' courses: using the attempt in one leaves the other's."""
    north_link, south_link = link_to(quiz, course=north_course), link_to(quiz, course=south_course)
    launch = launched(north_course)
    take(client, north_link, right=4)

    launched(south_course, lti_user=launch.lti_user)
    page = take(client, south_link, right=1)

    assert "1 of 4 correct" in page.content.decode()
    assert sorted(Attempt.objects.values_list("course__title", "number", "eligible")) == [
        ("Network+ at North", 1, True), ("Security+ at South", 1, True)
    ]


def test_an_attempt_opened_from_another_course_and_finished_after_a_proper_launch_counts(client, launched, link_to, north_course, other_north_course, quiz):
    link = link_to(quiz, course=north_course)
    other_launch = launched(other_north_course)
    client.post(reverse("courseware:start", kwargs={"link_id": link.pk}))
    assert Attempt.objects.get().eligible is False

    north_launch = launched(north_course, lti_user=other_launch.lti_user)  # the learner launches from this course now
    page = client.get(reverse("courseware:play", kwargs={"link_id": link.pk}))
    assert "not sent to the LMS gradebook" not in page.content.decode()
    answers = {f"q-{q.pk}": "0" for q in quiz.questions.all()}
    client.post(reverse("courseware:submit", kwargs={"link_id": link.pk, "attempt_id": page.context["attempt"].pk}), answers)

    attempt = Attempt.objects.get()
    assert (attempt.launch, attempt.eligible, attempt.ineligible_reason) == (north_launch, True, "")
    result = Result.objects.get()
    assert (result.launched_course, result.is_eligible) == (north_course, True)


def test_a_staff_password_alone_cannot_play(client, staff_user, link_to, quiz):
    """Staff play only once signed in as the admin requires: a password without the second factor plays nothing."""
    link = link_to(quiz)
    client.force_login(staff_user(None, username="support-person"))

    page = client.get(reverse("courseware:play", kwargs={"link_id": link.pk}))

    assert page.status_code == 403 and "Open this activity from your LMS course" in page.content.decode()
    assert not Attempt.objects.exists()
