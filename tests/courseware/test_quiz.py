"""A learner takes a quiz in the LMS frame: scored on the server, the fraction reaches grade sync."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from courseware.models import Attempt
from gradesync.models import Result

pytestmark = pytest.mark.django_db

LIMIT_MESSAGE = "You have used your 1 allowed attempt for this custom quiz. Ask your instructor if you need another."


def take(client, link, *, right: int):
    """Start an attempt and answer `right` questions correctly (choice 0), the rest wrongly."""
    play = reverse("courseware:play", kwargs={"link_id": link.pk})
    started = client.post(reverse("courseware:start", kwargs={"link_id": link.pk}))
    assert started.status_code == 302, started.content.decode()
    page = client.get(play)
    attempt = page.context["attempt"]
    questions = list(link.activity.questions.all())
    answers = {f"q-{q.pk}": "0" if n < right else "1" for n, q in enumerate(questions)}
    return client.post(
        reverse("courseware:submit", kwargs={"link_id": link.pk, "attempt_id": attempt.pk}), answers, follow=True
    )


def test_a_learner_scores_three_of_four_and_grade_sync_records_075(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    launch = launched(north_course)

    intro = client.get(reverse("courseware:play", kwargs={"link_id": link.pk}))
    assert intro.status_code == 200
    assert "Attempts allowed: 1 attempt" in intro.content.decode()
    assert intro.headers.get("X-Frame-Options") is None  # framed inside the LMS

    result_page = take(client, link, right=3)

    assert "3 of 4 correct (75%)" in result_page.content.decode()
    assert "recorded for your course" in result_page.content.decode()
    attempt = Attempt.objects.get()
    assert (attempt.score, attempt.eligible, attempt.launch) == (Decimal("0.75"), True, launch)
    assert attempt.started_at is not None and attempt.completed_at is not None
    result = Result.objects.get(source_ref=f"courseware-attempt-{attempt.pk}")
    assert result.score == Decimal("0.75")
    assert (result.course, result.lti_user, result.activity_key) == (north_course, launch.lti_user, str(quiz.pk))
    assert result.resource_link == link.resource_link
    assert result.launch_role == "learner" and result.launched_course == north_course
    assert result.is_eligible, result.ineligible_reason


def test_answers_are_scored_by_the_server_not_trusted_from_the_page(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    launched(north_course)
    client.post(reverse("courseware:start", kwargs={"link_id": link.pk}))
    attempt = Attempt.objects.get()

    # A forged post: a score field and answers to questions of no such id count for nothing.
    client.post(
        reverse("courseware:submit", kwargs={"link_id": link.pk, "attempt_id": attempt.pk}),
        {"score": "1", "q-999999": "0"},
    )

    assert Result.objects.get().score == Decimal("0")


def test_a_second_attempt_is_refused_with_the_message(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    launched(north_course)
    take(client, link, right=4)

    again = client.post(reverse("courseware:start", kwargs={"link_id": link.pk}))
    page = client.get(reverse("courseware:play", kwargs={"link_id": link.pk}))

    assert again.status_code == 403
    assert LIMIT_MESSAGE in again.content.decode()
    assert LIMIT_MESSAGE in page.content.decode()
    assert Attempt.objects.count() == 1


def test_submitting_the_same_attempt_twice_records_one_result(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    launched(north_course)
    client.post(reverse("courseware:start", kwargs={"link_id": link.pk}))
    attempt = Attempt.objects.get()
    submit = reverse("courseware:submit", kwargs={"link_id": link.pk, "attempt_id": attempt.pk})
    answers = {f"q-{q.pk}": "0" for q in quiz.questions.all()}

    client.post(submit, answers)
    second = client.post(submit, {}, follow=True)

    assert "4 of 4 correct (100%)" in second.content.decode()
    assert Result.objects.get().score == Decimal("1")


def test_reopening_an_unfinished_quiz_continues_the_same_attempt(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    launched(north_course)
    start = reverse("courseware:start", kwargs={"link_id": link.pk})
    client.post(start)
    client.post(start)

    page = client.get(reverse("courseware:play", kwargs={"link_id": link.pk}))

    assert "Attempt 1 of 1" in page.content.decode()
    assert Attempt.objects.count() == 1


def test_a_practice_test_allows_unlimited_attempts(client, launched, link_to, north_course):
    from courseware.models import ActivityKind
    from tests.courseware_factories import ActivityFactory, QuestionFactory

    practice = ActivityFactory(slug="practice", title="Practice test", kind=ActivityKind.PRACTICE_TEST)
    QuestionFactory(activity=practice)
    QuestionFactory(activity=practice)
    link = link_to(practice)
    launched(north_course)

    take(client, link, right=1)
    take(client, link, right=2)
    third = take(client, link, right=0)

    assert "0 of 2 correct (0%)" in third.content.decode()
    assert [a.number for a in Attempt.objects.order_by("number")] == [1, 2, 3]
    assert sorted(Result.objects.values_list("score", flat=True)) == [Decimal("0"), Decimal("0.5"), Decimal("1")]


def test_another_learners_attempt_cannot_be_submitted_or_seen(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    launched(north_course)
    client.post(reverse("courseware:start", kwargs={"link_id": link.pk}))
    theirs = Attempt.objects.get()
    launched(north_course)  # someone else launches in this browser now

    submitted = client.post(reverse("courseware:submit", kwargs={"link_id": link.pk, "attempt_id": theirs.pk}), {})
    seen = client.get(reverse("courseware:attempt", kwargs={"link_id": link.pk, "attempt_id": theirs.pk}))

    assert (submitted.status_code, seen.status_code) == (404, 404)
    assert not Result.objects.exists()


def test_without_a_launch_or_a_staff_login_nothing_opens(client, link_to, quiz):
    link = link_to(quiz)

    page = client.get(reverse("courseware:play", kwargs={"link_id": link.pk}))

    assert page.status_code == 403
    assert "Open this activity from your LMS course" in page.content.decode()
