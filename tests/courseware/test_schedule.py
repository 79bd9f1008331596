"""The instructor's scheduling page: attempts allowed for their own course's quizzes and assessments."""
from __future__ import annotations

import pytest
from django.urls import reverse

from courseware.models import ActivityKind, AttemptAllowance
from tests.courseware_factories import ActivityFactory, PlacementFactory

from .test_quiz import LIMIT_MESSAGE, take

pytestmark = pytest.mark.django_db

SCHEDULE = "/courseware/schedule/"


def test_the_schedule_url_is_named():
    assert reverse("courseware:schedule") == SCHEDULE


@pytest.fixture
def assessment():
    return ActivityFactory(slug="assessment", title="Competency assessment 1", kind=ActivityKind.COMPETENCY_ASSESSMENT)


def test_the_instructor_lists_only_their_courses_limited_activities(client, launched, link_to, north_course, south_course, quiz, assessment):
    reading = ActivityFactory(slug="a-reading", title="A reading", kind=ActivityKind.READING)
    link_to(quiz, course=north_course)
    link_to(reading, course=north_course)
    PlacementFactory(course=north_course, activity=assessment)  # placed, not launched yet
    elsewhere = ActivityFactory(slug="south-quiz", title="South's own quiz", kind=ActivityKind.CUSTOM_QUIZ)
    link_to(elsewhere, course=south_course)
    launched(north_course, role="instructor")

    page = client.get(SCHEDULE)

    assert page.status_code == 200
    assert [row["activity"] for row in page.context["rows"]] == [quiz, assessment]
    body = page.content.decode()
    assert "OSI model quiz" in body and "Competency assessment 1" in body
    assert "South&#x27;s own quiz" not in body and "A reading" not in body


def test_an_instructor_allows_a_second_attempt_and_the_learner_can_take_it(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    learner_launch = launched(north_course)
    take(client, link, right=1)
    assert client.post(reverse("courseware:start", kwargs={"link_id": link.pk})).status_code == 403

    instructor_launch = launched(north_course, role="instructor")
    saved = client.post(SCHEDULE, {"activity": quiz.pk, "attempts_allowed": "2"})
    assert saved.status_code == 200
    assert "Saved. “OSI model quiz”: 2 attempts allowed." in saved.content.decode()
    allowance = AttemptAllowance.objects.get()
    assert (allowance.course, allowance.attempts_allowed, allowance.set_by) == (north_course, 2, instructor_launch.lti_user)

    launched(north_course, lti_user=learner_launch.lti_user)
    second = take(client, link, right=4)
    assert "Attempt 2: 4 of 4 correct" in second.content.decode()
    third = client.post(reverse("courseware:start", kwargs={"link_id": link.pk}))
    assert "You have used all 2 allowed attempts for this custom quiz." in third.content.decode()


def test_empty_means_unlimited(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    launched(north_course, role="instructor")

    page = client.post(SCHEDULE, {"activity": quiz.pk, "attempts_allowed": ""})

    assert "Unlimited" in page.content.decode()
    learner = launched(north_course)
    for _ in range(3):
        take(client, link, right=4)
    assert learner.lti_user.attempts.count() == 3


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_value_that_is_not_a_positive_whole_number_is_refused(client, launched, link_to, north_course, quiz, value):
    link_to(quiz)
    launched(north_course, role="instructor")

    page = client.post(SCHEDULE, {"activity": quiz.pk, "attempts_allowed": value})

    assert page.status_code == 400
    assert "enter a whole number of 1 or more, or leave it empty for unlimited" in page.content.decode()
    assert not AttemptAllowance.objects.exists()


def test_another_kind_of_activity_is_refused_in_words(client, launched, link_to, north_course):
    reading = ActivityFactory(slug="a-reading", title="Ethernet basics", kind=ActivityKind.READING)
    link_to(reading)
    launched(north_course, role="instructor")

    page = client.post(SCHEDULE, {"activity": reading.pk, "attempts_allowed": "3"})

    assert page.status_code == 400
    assert "“Ethernet basics” is a reading: only custom quizzes and competency assessments have a limit" in page.content.decode()
    assert not AttemptAllowance.objects.exists()


def test_another_courses_activity_is_not_found(client, launched, link_to, north_course, south_course):
    south_quiz = ActivityFactory(slug="south-quiz", title="South quiz", kind=ActivityKind.CUSTOM_QUIZ)
    link_to(south_quiz, course=south_course)
    launched(north_course, role="instructor")

    page = client.post(SCHEDULE, {"activity": south_quiz.pk, "attempts_allowed": "5"})
    missing = client.post(SCHEDULE, {"activity": 987654, "attempts_allowed": "5"})

    assert (page.status_code, missing.status_code) == (404, 404)
    assert not AttemptAllowance.objects.exists()


def test_a_student_cannot_use_the_scheduling_page(client, launched, link_to, north_course, quiz):
    link_to(quiz)
    launched(north_course)

    page = client.get(SCHEDULE)
    post = client.post(SCHEDULE, {"activity": quiz.pk, "attempts_allowed": "9"})

    assert (page.status_code, post.status_code) == (403, 403)
    assert "Only the course&#x27;s instructors can schedule attempts" in page.content.decode()
    assert not AttemptAllowance.objects.exists()


@pytest.mark.parametrize("role", ["test_user", "other"])
def test_other_roles_cannot_schedule(client, launched, link_to, north_course, quiz, role):
    link_to(quiz)
    launched(north_course, role=role)

    assert client.post(SCHEDULE, {"activity": quiz.pk, "attempts_allowed": "9"}).status_code == 403


def test_a_staff_login_without_a_launch_cannot_schedule(client, staff_user, link_to, quiz):
    link_to(quiz)
    client.force_login(staff_user(None))

    assert client.get(SCHEDULE).status_code == 403


def test_one_courses_change_leaves_the_other_institutions_course_alone(client, launched, link_to, north_course, south_course, quiz):
    link_to(quiz, course=north_course)
    south_link = link_to(quiz, course=south_course)
    launched(north_course, role="instructor")
    client.post(SCHEDULE, {"activity": quiz.pk, "attempts_allowed": "3"})

    launched(south_course)
    take(client, south_link, right=4)
    again = client.post(reverse("courseware:start", kwargs={"link_id": south_link.pk}))

    assert LIMIT_MESSAGE in again.content.decode()
