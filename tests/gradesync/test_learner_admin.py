"""The learner's admin page: support finds a student by LMS user id, email or name, and from their
page reaches "why didn't this grade sync?" for each (course, activity), their deliveries and results."""
from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlencode

import pytest
from django.contrib import admin
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from lti_tool.models import LtiUser

from gradesync import api as gradesync_api
from gradesync.admin import LearnerAdmin
from gradesync.models import Delivery, Result
from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT
from tests.courseware_factories import LtiUserFactory
from tests.factories import CourseFactory
from tests.gradesync.test_diagnostics import ACTIVITY, record, world  # noqa: F401  (world is a fixture)

pytestmark = pytest.mark.django_db


def learner_page(client, lti_user):
    response = client.get(reverse("admin:lti_tool_ltiuser_change", args=[lti_user.pk]))
    assert response.status_code == 200
    return response


def listed(client, name: str, **params) -> list:
    response = client.get(reverse(f"admin:{name}_changelist"), params)
    assert response.status_code == 200, params
    return list(response.context["cl"].result_list)


def other_grade(world, activity="lab-1"):
    """A result of the same learner in the other institution's course, and one of a south learner."""
    south_learner = LtiUserFactory(registration=world.other_course.deployment.registration, sub="south-1",
                                   email="bob@south.example.edu", name="Bob Byron")
    for user in (world.learner, south_learner):
        gradesync_api.record_result(
            source_ref=f"other-{user.pk}-{activity}", lti_user=user, course=world.other_course, activity_key=activity,
            activity_title="Lab 1", resource_link=None, score=Decimal("0.5"), completed_at=timezone.now(),
            launch=gradesync_api.LaunchFacts(role="learner", course=world.other_course, deployment=world.other_course.deployment),
        )
    return south_learner


def test_ours_is_the_lti_user_admin():
    # django-lti registers no admin for LtiUser; if a release adds one, ours replaces it.
    assert isinstance(admin.site._registry[LtiUser], LearnerAdmin)


@pytest.mark.parametrize("query", ["canvas-user-4242", "ADA@north.example.edu", "lovelace", "Ada Love"])
def test_finds_a_learner_by_sub_email_or_name(query, world, client_for):
    south_learner = other_grade(world)
    found = listed(client_for(READ_ONLY), "lti_tool_ltiuser", q=query)
    assert [u.pk for u in found] == [world.learner.pk]
    assert south_learner not in found


def test_search_by_id_and_short_or_unknown_terms(world, client_for):
    client = client_for(SUPPORT)
    assert [u.pk for u in listed(client, "lti_tool_ltiuser", q=str(world.learner.pk))] == [world.learner.pk]
    assert listed(client, "lti_tool_ltiuser", q="Ad") == []  # a name needs three letters (the trigram index)
    assert listed(client, "lti_tool_ltiuser", q="nobody@nowhere.example") == []


def test_the_learner_page_reaches_why_for_each_course_and_activity(world, client_for):
    record(world)
    other_grade(world)
    client = client_for(SUPPORT)
    response = learner_page(client, world.learner)
    rows = response.context["learner_grades"]
    assert {(grade.course_id, grade.activity_key) for grade, *_ in rows} == {
        (world.course.pk, ACTIVITY), (world.other_course.pk, "lab-1"),
    }
    body = response.content.decode()
    assert "Quiz 7: subnetting" in body and "Lab 1" in body
    for grade, why, deliveries, results in rows:
        assert why in body.replace("&amp;", "&")
        diagnosis = client.get(why).context["diagnosis"]
        assert (diagnosis.lti_user, diagnosis.course.pk, diagnosis.activity_key) == (world.learner, grade.course_id, grade.activity_key)
        assert {d.pk for d in listed(client, "gradesync_delivery", **_params(deliveries))} == set(
            Delivery.objects.filter(lti_user=world.learner, course_id=grade.course_id, activity_key=grade.activity_key).values_list("pk", flat=True)
        )
        assert {r.pk for r in listed(client, "gradesync_result", **_params(results))} == set(
            Result.objects.filter(lti_user=world.learner, course_id=grade.course_id, activity_key=grade.activity_key).values_list("pk", flat=True)
        )
    # All their deliveries and results, from the page's tools.
    mine = set(Delivery.objects.filter(lti_user=world.learner).values_list("pk", flat=True))
    assert mine
    assert {d.pk for d in listed(client, "gradesync_delivery", **_params(response.context["deliveries_url"]))} == mine
    assert reverse("gradesync_why_learner", args=[world.learner.pk]) in body


def _params(url: str) -> dict:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(url).query))


def test_reached_from_delivery_and_result_pages(world, client_for):
    result = record(world)
    delivery = Delivery.objects.get()
    client = client_for(READ_ONLY)
    page = reverse("admin:lti_tool_ltiuser_change", args=[world.learner.pk])
    assert page in client.get(reverse("admin:gradesync_delivery_change", args=[delivery.pk])).content.decode()
    assert page in client.get(reverse("admin:gradesync_result_change", args=[result.pk])).content.decode()
    assert page in client.get(reverse("admin:gradesync_delivery_changelist")).content.decode()
    assert page in client.get(reverse("admin:gradesync_result_changelist")).content.decode()
    why = reverse("gradesync_why") + "?" + urlencode({"user": world.learner.pk, "course": world.course.pk, "activity": ACTIVITY})
    assert page in client.get(why).content.decode()


@pytest.mark.parametrize("role", [SUPPORT, INTEGRATION, READ_ONLY])
def test_every_staff_role_reads_and_nobody_changes(role, world, client_for):
    record(world)
    client = client_for(role)
    assert client.get(reverse("admin:lti_tool_ltiuser_changelist")).status_code == 200
    response = learner_page(client, world.learner)
    assert response.context["learner_grades"]
    assert client.get(reverse("admin:lti_tool_ltiuser_add")).status_code == 403
    before = LtiUser.objects.get(pk=world.learner.pk).email
    client.post(reverse("admin:lti_tool_ltiuser_change", args=[world.learner.pk]), {"email": "changed@example.edu"})
    assert LtiUser.objects.get(pk=world.learner.pk).email == before
    assert client.post(reverse("admin:lti_tool_ltiuser_delete", args=[world.learner.pk])).status_code == 403


def test_staff_without_a_role_is_refused(world, client_for):
    client = client_for(None)
    assert client.get(reverse("admin:lti_tool_ltiuser_changelist")).status_code == 403
    assert client.get(reverse("admin:lti_tool_ltiuser_change", args=[world.learner.pk])).status_code == 403


def _queries(client, url: str, params: dict | None = None) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url, params or {}).status_code == 200
    return len(captured)


def test_query_counts_do_not_grow_with_rows(world, client_for):
    client = client_for(SUPPORT)
    record(world)
    registration = world.course.deployment.registration
    LtiUserFactory(registration=registration, name="Learner first")  # the search matches from the start
    changelist = reverse("admin:lti_tool_ltiuser_changelist")
    page = reverse("admin:lti_tool_ltiuser_change", args=[world.learner.pk])
    few = (_queries(client, changelist), _queries(client, changelist, {"q": "learner"}), _queries(client, page))
    for index in range(25):
        LtiUserFactory(registration=registration, name=f"Learner {index}")
        course = CourseFactory(institution=world.north, deployment=world.course.deployment)
        gradesync_api.record_result(
            source_ref=f"many-{index}", lti_user=world.learner, course=course, activity_key=f"a{index}",
            activity_title=f"A {index}", resource_link=None, score=Decimal("0.5"), completed_at=timezone.now(),
            launch=gradesync_api.LaunchFacts(role="learner", course=course, deployment=course.deployment),
        )
    many = (_queries(client, changelist), _queries(client, changelist, {"q": "learner"}), _queries(client, page))
    assert few == many
    assert len(learner_page(client, world.learner).context["learner_grades"]) == 26
