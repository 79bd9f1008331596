"""A lab: a task, then a scored check of free answers (case and spacing do not matter)."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from courseware.models import ActivityKind, Attempt
from courseware.services import is_correct
from gradesync.models import Result
from tests.courseware_factories import ActivityFactory, QuestionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def lab():
    activity = ActivityFactory(
        slug="lab-ipconfig", title="Lab: IP configuration", kind=ActivityKind.LAB,
        body="Open a command prompt on the lab VM and find its network settings.",
    )
    QuestionFactory(activity=activity, position=1, choices=[],
                    prompt="Which command shows the IP configuration on Windows?", answer=["ipconfig", "ipconfig /all"])
    QuestionFactory(activity=activity, position=2, choices=[],
                    prompt="Which command tests reachability of a host?", answer=["ping"])
    QuestionFactory(activity=activity, position=3, choices=[],
                    prompt="Which command shows the route to a host on Windows?", answer=["tracert"])
    return activity


def test_the_lab_check_accepts_any_listed_answer_whatever_its_case_and_spacing(client, launched, link_to, north_course, lab):
    link = link_to(lab)
    launched(north_course)
    intro = client.get(reverse("courseware:play", kwargs={"link_id": link.pk}))
    assert "Open a command prompt on the lab VM" in intro.content.decode()
    client.post(reverse("courseware:start", kwargs={"link_id": link.pk}))
    page = client.get(reverse("courseware:play", kwargs={"link_id": link.pk}))
    assert "Which command shows the IP configuration on Windows?" in page.content.decode()
    first, second, third = lab.questions.all()

    result_page = client.post(
        reverse("courseware:submit", kwargs={"link_id": link.pk, "attempt_id": page.context["attempt"].pk}),
        {f"q-{first.pk}": "  IPConfig   /ALL ", f"q-{second.pk}": "PING", f"q-{third.pk}": "traceroute"},
        follow=True,
    )

    body = result_page.content.decode()
    assert "2 of 3 correct (67%)" in body
    assert "Expected: tracert" in body  # a lab shows what was expected
    assert Attempt.objects.get().score == Decimal("0.66667")
    assert Result.objects.get().score == Decimal("0.66667")


@pytest.mark.parametrize(
    ("given", "correct"),
    [("ipconfig", True), ("IPCONFIG", True), (" ipconfig\t/all ", True), ("ip config", False), ("", False)],
)
def test_free_answers_match_without_case_or_extra_spaces(given, correct):
    assert is_correct(choices=[], answer=["ipconfig", "ipconfig /all"], given=given) is correct
