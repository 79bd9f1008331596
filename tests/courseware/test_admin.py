"""The catalog and the learner's records in the admin; changelists that do not grow with their rows."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from courseware.models import ActivityKind, Attempt
from institutions.models import AuditEntry
from tests.conftest import sign_in_verified
from tests.courseware_factories import ActivityFactory, LaunchFactory, QuestionFactory

from .test_quiz import take

pytestmark = pytest.mark.django_db

CHANGELISTS = ["activity", "placement", "activitylink", "launch", "attempt", "attemptallowance"]


@pytest.fixture
def admin_client_(client, django_user_model):
    return sign_in_verified(client, django_user_model.objects.create_superuser(username="root", password="pw"))


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured)


def make_attempts(client, launched, link_to, course, quiz, n: int) -> None:
    link = link_to(quiz, course=course)
    for _ in range(n):
        launched(course)
        take(client, link, right=2)


def test_the_learner_side_changelists_do_not_grow_with_their_rows(client, django_user_model, launched, link_to, north_course, south_course, quiz):
    make_attempts(client, launched, link_to, north_course, quiz, 1)
    root = django_user_model.objects.create_superuser(username="root", password="pw")
    sign_in_verified(client, root)
    one = {name: _queries(client, reverse(f"admin:courseware_{name}_changelist"))
           for name in ["placement", "activitylink", "launch", "attempt"]}

    client.logout()
    make_attempts(client, launched, link_to, south_course, quiz, 4)
    sign_in_verified(client, root)
    many = {name: _queries(client, reverse(f"admin:courseware_{name}_changelist"))
            for name in ["placement", "activitylink", "launch", "attempt"]}

    assert many == one
    page = client.get(reverse("admin:courseware_attempt_changelist"))
    assert "OSI model quiz" in page.content.decode()


def test_attempts_are_read_only_in_the_admin(admin_client_, launched, link_to, north_course, quiz):
    attempt_changelist = admin_client_.get(reverse("admin:courseware_attempt_changelist"))
    assert "Add attempt" not in attempt_changelist.content.decode()
    assert admin_client_.get(reverse("admin:courseware_attempt_add")).status_code == 403
    assert admin_client_.get(reverse("admin:courseware_launch_add")).status_code == 403


def test_the_catalog_lists_by_position_and_searches(admin_client_):
    header = ActivityFactory(slug="s1", title="Section 1: Networking concepts", kind=ActivityKind.SECTION_HEADER, position=1)
    quiz = ActivityFactory(slug="q1", title="Ports and protocols quiz", kind=ActivityKind.CUSTOM_QUIZ, section=header, position=3)
    ActivityFactory(slug="r1", title="Reading: the OSI model", kind=ActivityKind.READING, section=header, position=2)
    QuestionFactory(activity=quiz)

    page = admin_client_.get(reverse("admin:courseware_activity_changelist"))
    found = admin_client_.get(reverse("admin:courseware_activity_changelist"), {"q": "ports"})

    body = page.content.decode()
    assert body.index("Section 1: Networking concepts") < body.index("Reading: the OSI model") < body.index("Ports and protocols quiz")
    assert [a.title for a in found.context["cl"].result_list] == ["Ports and protocols quiz"]


def test_a_catalog_change_with_its_questions_is_audited(admin_client_):
    quiz = ActivityFactory(slug="q1", title="Ports quiz", kind=ActivityKind.CUSTOM_QUIZ, position=3)
    url = reverse("admin:courseware_activity_change", args=[quiz.pk])
    data = {
        "title": "Ports and protocols quiz", "slug": "q1", "kind": "custom_quiz", "section": "", "position": "3",
        "is_published": "on", "summary": "", "body": "", "video_url": "", "default_points": "10",
        "questions-TOTAL_FORMS": "1", "questions-INITIAL_FORMS": "0", "questions-MIN_NUM_FORMS": "0",
        "questions-MAX_NUM_FORMS": "1000", "questions-0-position": "1",
        "questions-0-prompt": "Which port does HTTPS use?", "questions-0-choices": '["80", "443", "22"]',
        "questions-0-answer": "1",
    }

    response = admin_client_.post(url, data)

    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    quiz.refresh_from_db()
    assert quiz.title == "Ports and protocols quiz"
    assert quiz.questions.get().choices == ["80", "443", "22"]
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"activity.changed", "question.created"} <= actions


@pytest.mark.parametrize("name", CHANGELISTS)
def test_every_courseware_changelist_opens(admin_client_, name):
    LaunchFactory()
    assert admin_client_.get(reverse(f"admin:courseware_{name}_changelist")).status_code == 200
