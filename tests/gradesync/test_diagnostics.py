""""Why didn't this grade sync?": every failing rule named, the LMS's refusal with its advice, search, permissions."""
from __future__ import annotations

import datetime
import itertools
from decimal import Decimal
from urllib.parse import urlencode

import pytest
from django.urls import reverse
from django.utils import timezone
from lti_tool.models import LtiLineItem

from gradesync import api as gradesync_api
from gradesync import diagnostics
from gradesync.models import Delivery, DeliveryExchange, DeliveryStatus, SyncWarning
from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT
from tests.courseware_factories import LtiUserFactory, ResourceLinkFactory
from tests.factories import ContextFactory, CourseFactory, DeploymentFactory, OwnedDeploymentFactory

_refs = itertools.count(1)
ACTIVITY = "quiz-7"


@pytest.fixture
def world(two_institutions):
    """A course in each institution, a learner of the north course, a graded link with its line item."""
    north, south = two_institutions
    course = CourseFactory(institution=north, title="Network+ Fundamentals")
    course.context.lineitems_url = f"https://lms.example.edu/api/lti/courses/{course.context_id}/line_items"
    course.context.save()
    other_course = CourseFactory(institution=south, title="Security+ Bootcamp")
    learner = LtiUserFactory(registration=course.deployment.registration, sub="canvas-user-4242",
                             email="ada@north.example.edu", name="Ada Lovelace")
    link = ResourceLinkFactory(context=course.context)
    LtiLineItem.objects.create(context=course.context, resource_link=link, url="https://lms.example.edu/li/1",
                               label="Quiz 7", maximum_score=20, resource_id=ACTIVITY)
    return type("World", (), {"course": course, "other_course": other_course, "learner": learner, "link": link,
                              "north": north, "south": south})


def record(world, *, role="learner", launched_course="same", deployment="same", graded=True, score="0.8",
           completed_at=None, link="same"):
    course = world.course
    return gradesync_api.record_result(
        source_ref=f"diag-{next(_refs)}",
        lti_user=world.learner,
        course=course,
        activity_key=ACTIVITY,
        activity_title="Quiz 7: subnetting",
        resource_link=world.link if link == "same" else link,
        score=Decimal(score),
        completed_at=completed_at or timezone.now(),
        launch=gradesync_api.LaunchFacts(
            role=role,
            course=course if launched_course == "same" else launched_course,
            deployment=course.deployment if deployment == "same" else deployment,
        ),
        link_graded=graded,
    )


def why_page(client, world):
    url = reverse("gradesync_why") + "?" + urlencode({"user": world.learner.pk, "course": world.course.pk, "activity": ACTIVITY})
    response = client.get(url)
    assert response.status_code == 200
    return response


def failed_rules(response) -> list[str]:
    return [rule.rule for rule in response.context["diagnosis"].rules if not rule.passed]


@pytest.mark.django_db
class TestEachFailingRuleIsNamed:
    def test_role_at_launch(self, world, client_for):
        record(world, role="instructor")
        response = why_page(client_for(SUPPORT), world)
        assert failed_rules(response) == ["learner"]
        body = response.content.decode()
        assert 'data-rule="learner" data-passed="no"' in body
        assert "Role at launch: Instructor." in body
        assert "Only a student&#x27;s own attempts sync" in body

    def test_launched_from_another_course(self, world, client_for):
        record(world, launched_course=world.other_course)
        response = why_page(client_for(SUPPORT), world)
        assert failed_rules(response) == ["launched_from_course"]
        assert "Launched from another course: Security+ Bootcamp." in response.content.decode()

    def test_manual_login(self, world, client_for):
        record(world, role="", launched_course=None, deployment=None)
        response = why_page(client_for(SUPPORT), world)
        assert failed_rules(response) == ["learner", "launched_from_course"]
        assert "No LTI launch (direct login)" in response.content.decode()

    def test_completed_outside_the_course_dates(self, world, client_for):
        world.course.starts_at = timezone.now() - datetime.timedelta(days=90)
        world.course.ends_at = timezone.now() - datetime.timedelta(days=1)
        world.course.save()
        record(world)
        response = why_page(client_for(SUPPORT), world)
        assert failed_rules(response) == ["within_course_dates"]
        assert "course runs" in response.content.decode()

    def test_ungraded_link(self, world, client_for):
        record(world, graded=False)
        response = why_page(client_for(SUPPORT), world)
        assert "graded_link" in failed_rules(response)
        assert "The link was added ungraded" in response.content.decode()

    def test_no_line_item_bound(self, world, client_for):
        world.course.context.lineitems_url = ""
        world.course.context.save()
        unbound = ResourceLinkFactory(context=world.course.context)
        LtiLineItem.objects.all().delete()
        record(world, link=unbound)
        response = why_page(client_for(SUPPORT), world)
        assert failed_rules(response) == ["line_item_bound"]
        assert "the LMS gave no line items service" in response.content.decode()

    def test_inactive_deployment(self, world, client_for):
        world.course.deployment.is_active = False
        world.course.deployment.save()
        record(world)
        response = why_page(client_for(SUPPORT), world)
        assert failed_rules(response) == ["deployment_accepts"]
        assert f"Deployment {world.course.deployment.deployment_id} is inactive." in response.content.decode()

    def test_unowned_deployment(self, world, client_for):
        world.course.deployment.ownership.delete()
        record(world)
        response = why_page(client_for(SUPPORT), world)
        assert failed_rules(response) == ["deployment_accepts"]
        assert "belongs to no institution" in response.content.decode()

    def test_two_line_items_for_one_activity(self, world, client_for):
        LtiLineItem.objects.create(context=world.course.context, url="https://lms.example.edu/li/2",
                                   label="Quiz 7 (copy)", maximum_score=20, resource_id=ACTIVITY)
        record(world)  # planning the delivery sees both and warns support
        assert SyncWarning.objects.filter(course=world.course, kind="duplicate_line_items").exists()
        response = why_page(client_for(SUPPORT), world)
        assert failed_rules(response) == ["one_line_item"]
        body = response.content.decode()
        assert "remove the extra column in the LMS" in body

    def test_course_moved_to_another_deployment(self, world, client_for):
        elsewhere = OwnedDeploymentFactory(institution=world.north,
                                           deployment=DeploymentFactory(registration=world.course.deployment.registration)).deployment
        record(world, deployment=elsewhere)
        response = why_page(client_for(SUPPORT), world)
        assert failed_rules(response) == ["deployment_scope"]
        body = response.content.decode()
        assert f"launched under deployment {elsewhere.deployment_id}" in body
        assert "Deploy the tool where the course now is" in body

    def test_canvas_not_linked_refusal_is_read_as_a_move(self, world, client_for):
        record(world)
        delivery = Delivery.objects.get()
        Delivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.REFUSED, last_status_code=401,
            last_message="Canvas refused: the course left this deployment's scope. LMS said: "
                         '{"errors":[{"message":"Access token not linked to a tool associated with this context"}]}',
        )
        response = why_page(client_for(READ_ONLY), world)
        assert failed_rules(response) == ["deployment_scope"]
        assert "401" in response.content.decode()

    def test_every_rule_passes_and_the_sent_grade_says_nothing_to_do(self, world, client_for):
        record(world, score="0.6")
        Delivery.objects.update(status=DeliveryStatus.SENT, sent_at=timezone.now())
        response = why_page(client_for(INTEGRATION), world)
        diagnosis = response.context["diagnosis"]
        assert failed_rules(response) == []
        assert [r.rule for r in diagnosis.rules] == [
            "learner", "launched_from_course", "within_course_dates", "graded_link", "line_item_bound",
            "deployment_accepts", "one_line_item", "deployment_scope",
        ]
        assert diagnosis.next_steps[0].startswith("Nothing to do: the LMS accepted 12 / 20 (60 %)")  # its 20 points


@pytest.mark.django_db
def test_attempts_show_which_one_the_policy_picks(world, client_for):
    best = record(world, score="0.9", completed_at=timezone.now() - datetime.timedelta(hours=2))
    record(world, score="0.4")
    record(world, score="1.0", role="instructor")
    response = why_page(client_for(SUPPORT), world)
    diagnosis = response.context["diagnosis"]
    assert [row.result.score for row in diagnosis.attempts if row.picked] == [Decimal("0.9")]
    assert diagnosis.picked.pk == best.pk
    assert "← picked by the policy" in response.content.decode()
    # A failed rule on another attempt does not hide the picked attempt's facts.
    assert diagnosis.rules_of.pk == best.pk


@pytest.mark.django_db
def test_no_result_says_nothing_was_reported(world, client_for):
    response = why_page(client_for(SUPPORT), world)
    assert "No result recorded" in response.context["diagnosis"].verdict


@pytest.mark.django_db
def test_every_exchange_is_listed_with_the_lms_message_and_the_query_count_is_fixed(world, client_for, django_assert_max_num_queries):
    record(world)
    delivery = Delivery.objects.get()
    for code, text in [(503, "Service Unavailable"), (422, "The maximum number of allowed attempts has been reached")]:
        DeliveryExchange.objects.create(delivery=delivery, status_code=code, outcome="retry", message=text)
    client = client_for(SUPPORT)
    with django_assert_max_num_queries(20):
        body = why_page(client, world).content.decode()
    assert "Service Unavailable" in body and "maximum number of allowed attempts" in body


@pytest.mark.django_db
class TestSearch:
    @pytest.fixture(autouse=True)
    def _results(self, world):
        record(world)
        self.world = world
        # A learner of the other institution, to be sure search does not mix them up.
        south_learner = LtiUserFactory(registration=world.other_course.deployment.registration, sub="south-1", email="bob@south.example.edu")
        gradesync_api.record_result(
            source_ref="south-1", lti_user=south_learner, course=world.other_course, activity_key="lab-1",
            activity_title="Lab 1", resource_link=None, score=Decimal("0.5"), completed_at=timezone.now(),
            launch=gradesync_api.LaunchFacts(role="learner", course=world.other_course, deployment=world.other_course.deployment),
        )

    @pytest.mark.parametrize("query", ["ada@north.example.edu", "ADA@north.example.edu", "canvas-user-4242", "Lovelace",
                                       "Network+ Fundamentals", "network+"])
    def test_finds_by_email_sub_name_and_course_title(self, query, client_for):
        response = client_for(READ_ONLY).get(reverse("gradesync_why"), {"q": query})
        matches = [m for m, _url in response.context["matches"]]
        assert [(m.sub, m.activity_key) for m in matches] == [("canvas-user-4242", ACTIVITY)]
        assert "Quiz 7: subnetting" in response.content.decode()

    def test_finds_by_context_id(self, client_for):
        context_id = self.world.course.context.id_on_platform
        response = client_for(SUPPORT).get(reverse("gradesync_why"), {"q": context_id})
        assert [m.context_id for m, _url in response.context["matches"]] == [context_id]

    def test_finds_by_delivery_id_and_links_to_the_diagnosis(self, client_for):
        delivery = Delivery.objects.get(course=self.world.course)
        response = client_for(SUPPORT).get(reverse("gradesync_why"), {"q": f"#{delivery.pk}"})
        (match, url), = response.context["matches"]
        assert url == diagnostics_url(self.world)

    def test_no_match_says_what_to_try(self, client_for):
        response = client_for(SUPPORT).get(reverse("gradesync_why"), {"q": "nobody@nowhere"})
        assert "No learner, course or grade matches" in response.content.decode()


def diagnostics_url(world) -> str:
    return reverse("gradesync_why") + "?" + urlencode({"user": world.learner.pk, "course": world.course.pk, "activity": ACTIVITY})


@pytest.mark.django_db
def test_reached_from_delivery_result_course_and_learner(world, client_for):
    result = record(world)
    delivery = Delivery.objects.get()
    client = client_for(SUPPORT)
    assert client.get(reverse("gradesync_why_delivery", args=[delivery.pk])).url == diagnostics_url(world)
    assert client.get(reverse("gradesync_why_result", args=[result.pk])).url == diagnostics_url(world)
    assert world.course.context.id_on_platform in client.get(reverse("gradesync_why_course", args=[world.course.pk])).url
    assert world.learner.sub in client.get(reverse("gradesync_why_learner", args=[world.learner.pk])).url
    # The links on the admin pages.
    assert reverse("gradesync_why_delivery", args=[delivery.pk]) in client.get(reverse("admin:gradesync_delivery_change", args=[delivery.pk])).content.decode()
    assert reverse("gradesync_why_result", args=[result.pk]) in client.get(reverse("admin:gradesync_result_change", args=[result.pk])).content.decode()
    assert reverse("gradesync_why_course", args=[world.course.pk]) in client.get(reverse("admin:institutions_course_change", args=[world.course.pk])).content.decode()
    assert reverse("gradesync_why_delivery", args=[delivery.pk]) in client.get(reverse("admin:gradesync_delivery_changelist")).content.decode()
    index = client.get(reverse("admin:index")).content.decode()
    assert reverse("gradesync_why") in index and reverse("gradesync_health") in index


@pytest.mark.django_db
class TestPermissions:
    @pytest.mark.parametrize("role", [SUPPORT, INTEGRATION, READ_ONLY])
    def test_every_staff_role_reads(self, role, world, client_for):
        record(world)
        client = client_for(role)
        assert why_page(client, world).status_code == 200
        assert client.get(reverse("gradesync_why"), {"q": "ada"}).status_code == 200

    def test_only_support_is_offered_the_resync(self, world, client_for):
        record(world)
        assert why_page(client_for(SUPPORT), world).context["resync_url"]

    def test_read_only_is_not_offered_the_resync(self, world, client_for):
        record(world)
        assert not why_page(client_for(READ_ONLY), world).context["resync_url"]

    def test_anonymous_gets_the_admin_login(self, world, client):
        response = client.get(diagnostics_url(world))
        assert response.status_code == 302 and reverse("admin:login") in response.url

    def test_non_staff_gets_the_admin_login(self, world, client, django_user_model):
        client.force_login(django_user_model.objects.create_user("learner", password="pw"))
        response = client.get(diagnostics_url(world))
        assert response.status_code == 302 and reverse("admin:login") in response.url

    def test_staff_without_a_role_is_refused(self, world, client_for):
        assert client_for(None).get(diagnostics_url(world)).status_code == 403


# --- Over HTTP against the sandbox Canvas: the real refusal, with its advice ----------------------


@pytest.mark.django_db(transaction=True)
def test_canvas_allowed_attempts_refusal_shows_the_advice(live_server, two_institutions, client_for):
    from django.apps import apps

    from institutions.roles import sync_staff_roles
    from tests.gradesync.test_delivery import Classroom

    sync_staff_roles(apps)  # a transactional test before this one flushed the role groups

    canvas = Classroom(live_server.url, two_institutions[0], "canvas")
    canvas.sandbox_line_item.allowed_attempts = 1
    canvas.sandbox_line_item.save()
    from sandbox_lms import api as sandbox

    sandbox.forget_caches()
    student = canvas.connected.students[0]
    launch = canvas.launch(student)
    canvas.finish(launch, "0.5", minutes_ago=5)
    canvas.finish(launch, "0.9")
    refused = Delivery.objects.order_by("-id").first()
    assert refused.status == DeliveryStatus.REFUSED
    response = client_for(SUPPORT).get(reverse("gradesync_why_delivery", args=[refused.pk]), follow=True)
    diagnosis = response.context["diagnosis"]
    assert diagnosis.next_steps[0] == (
        "Canvas refused: Allowed Attempts reached. Raise Allowed Attempts in Canvas, then resync this grade."
    )
    body = response.content.decode()
    assert "Raise Allowed Attempts in Canvas, then resync this grade." in body
    assert "maximum number of allowed attempts" in body  # the LMS's own message, in the exchanges
    assert [x.exchange.status_code for x in diagnosis.exchanges][0] == 422
    assert "Resync this grade" in body
    assert diagnostics.diagnose(lti_user=launch.lti_user, course=launch.course, activity_key=str(canvas.quiz.pk)).failed_rules == []
