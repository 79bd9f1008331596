"""The support desk (#14 items 1–3, 7): find a scope by name, resync from the page you stand on, a policy change
that finishes the job, and no resync offered to a role that cannot do it.

Rows are written directly (results, sent deliveries) and the resync job's planning is not queued: these tests are
about what the admin offers, refuses and creates. Resyncs reaching the sandbox LMS are tests/gradesync/test_resync.py's.
"""
from __future__ import annotations

import datetime
import itertools
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone
from lti_tool.models import LtiUser

from gradesync import resync
from gradesync.admin_links import resync_url
from gradesync.models import Delivery, DeliveryStatus, ResyncJob, ResyncJobStatus, Result
from institutions.models import AuditEntry, Course, GradePolicy, Institution
from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT
from tests.courseware_factories import LtiUserFactory
from tests.factories import ContextFactory, CourseFactory, OwnedDeploymentFactory

pytestmark = pytest.mark.django_db
_refs = itertools.count(1)

RESYNC = "/admin/gradesync/resyncjob/resync/"
AUTOCOMPLETE = "/admin/gradesync/resyncjob/resync/autocomplete/"
ACTIVITIES = "/admin/gradesync/resyncjob/resync/activities/"


def grade(course: Course, learner: LtiUser, activity: str, title: str, scores: list[str], *, sent: str | None) -> None:
    """A learner's attempts at one activity (oldest first), and the grade last sent to the LMS (None: never sent)."""
    now = timezone.now()
    results = [
        Result.objects.create(
            source_ref=f"desk-{next(_refs)}", lti_user=learner, course=course, activity_key=activity, activity_title=title,
            score=Decimal(score), completed_at=now - datetime.timedelta(minutes=10 * (len(scores) - i)), is_eligible=True,
        )
        for i, score in enumerate(scores)
    ]
    if sent is not None:
        Delivery.objects.create(
            result=results[0], course=course, institution=course.institution, registration=course.deployment.registration,
            deployment=course.deployment, lti_user=learner, activity_key=activity, score=Decimal(sent),
            status=DeliveryStatus.SENT, recorded_at=now, sent_at=now,
        )


def course(institution: Institution, deployment, title: str, context_id: str) -> Course:
    context = ContextFactory(deployment=deployment, id_on_platform=context_id, title=title)
    return CourseFactory(institution=institution, deployment=deployment, context=context, title=title)


@dataclass
class Desk:
    north: Institution
    south: Institution
    networking: Course
    security: Course
    south_course: Course
    ada: LtiUser
    grace: LtiUser
    bob: LtiUser


@pytest.fixture
def desk(two_institutions, monkeypatch) -> Desk:
    """North: 'Networking 101' (Ada, Grace; two quizzes) and 'Security 201' (Grace); South: Bob, a look-alike email."""
    monkeypatch.setattr("gradesync.resync.jobs._queue_job", lambda job_id, countdown=None: None)  # no worker here
    north, south = two_institutions
    north_deployment = OwnedDeploymentFactory(institution=north).deployment
    networking = course(north, north_deployment, "Networking 101", "canvas-net-101")
    security = course(north, north_deployment, "Security 201", "canvas-sec-201")
    south_course = course(south, OwnedDeploymentFactory(institution=south).deployment, "Networking 101 (South)", "south-net")
    registration = networking.deployment.registration
    ada = LtiUserFactory(registration=registration, sub="canvas-4242", name="Ada Lovelace", email="ada.lovelace@north.example.edu")
    grace = LtiUserFactory(registration=registration, sub="canvas-7", name="Grace Hopper", email="grace@north.example.edu")
    bob = LtiUserFactory(registration=south_course.deployment.registration, sub="south-1", name="Bob Lovelace",
                         email="bob.lovelace@south.example.edu")
    # Highest sent 0.9; Most Recent would pick 0.5: a policy change affects these two.
    grade(networking, ada, "101", "Quiz: ports and protocols", ["0.9", "0.5"], sent="0.9")
    grade(networking, grace, "101", "Quiz: ports and protocols", ["0.4", "0.8"], sent="0.8")  # the same either way
    grade(networking, ada, "102", "Quiz: subnetting", ["0.7", "0.6"], sent="0.7")
    grade(security, grace, "201", "Reading: firewalls", ["1.0"], sent="1.0")
    grade(south_course, bob, "101", "Quiz: ports and protocols", ["0.9", "0.1"], sent="0.9")
    return Desk(north, south, networking, security, south_course, ada, grace, bob)


def choices(client, **params) -> list[str]:
    response = client.get(AUTOCOMPLETE if params.get("field_name") != "activity" else ACTIVITIES, params)
    assert response.status_code == 200, response.content
    return [row["text"] for row in response.json()["results"]]


def ask(field: str, **params) -> dict:
    return {"app_label": "gradesync", "model_name": "resyncjob", "field_name": field, **params}


# --- 1. Find by name --------------------------------------------------------------------------


def test_courses_are_found_by_title_or_lms_context_id_within_the_chosen_institution(desk, client_for):
    client = client_for(SUPPORT)
    assert choices(client, **ask("course", term="network", institution=desk.north.pk)) == ["Networking 101 (canvas-net-101)"]
    assert choices(client, **ask("course", term="canvas-sec", institution=desk.north.pk)) == ["Security 201 (canvas-sec-201)"]
    assert choices(client, **ask("course", term="", institution=desk.north.pk)) == [
        "Networking 101 (canvas-net-101)", "Security 201 (canvas-sec-201)"]
    # South's look-alike course is South's only.
    assert choices(client, **ask("course", term="network", institution=desk.south.pk)) == ["Networking 101 (South) (south-net)"]
    # With a learner chosen (from the learner's page): only their courses.
    assert choices(client, **ask("course", institution=desk.north.pk, lti_user=desk.ada.pk)) == ["Networking 101 (canvas-net-101)"]


@pytest.mark.parametrize("term", ["lovelace@", "LOVELACE", "Ada Lo", "4242"])
def test_a_learner_is_found_by_part_of_their_email_name_or_lms_user_id_within_the_course(term, desk, client_for):
    found = choices(client_for(SUPPORT), **ask("lti_user", term=term, institution=desk.north.pk, course=desk.networking.pk))
    # Bob Lovelace (South) matches the same words but is never offered.
    assert found == ["Ada Lovelace <ada.lovelace@north.example.edu> · canvas-4242"]


def test_only_the_courses_learners_and_activities_are_offered(desk, client_for):
    client = client_for(SUPPORT)
    assert choices(client, **ask("lti_user", institution=desk.north.pk, course=desk.security.pk)) == [
        "Grace Hopper <grace@north.example.edu> · canvas-7"]
    assert choices(client, field_name="activity", term="quiz", institution=desk.north.pk, course=desk.networking.pk) == [
        "Quiz: ports and protocols (101)", "Quiz: subnetting (102)"]
    assert choices(client, field_name="activity", term="SUBNET", institution=desk.north.pk, course=desk.networking.pk) == [
        "Quiz: subnetting (102)"]
    assert choices(client, field_name="activity", institution=desk.north.pk, course=desk.security.pk) == [
        "Reading: firewalls (201)"]


@pytest.mark.parametrize("url,params,reason", [
    (AUTOCOMPLETE, ask("course", term="net"), "Choose the institution first."),
    (AUTOCOMPLETE, ask("course", institution="1 OR 1=1"), "not an id"),
    (AUTOCOMPLETE, ask("course", institution="999999"), "No such institution."),
    (AUTOCOMPLETE, ask("lti_user", term="ada"), "Choose the institution first."),
    (AUTOCOMPLETE, ask("lti_user", term="ada", institution="NORTH"), "Choose the course first."),
    (AUTOCOMPLETE, ask("lti_user", term="bob", institution="NORTH", course="SOUTH_COURSE"), "No such course in this institution."),
    (AUTOCOMPLETE, ask("course", term="x" * 101, institution="NORTH"), "at most 100 characters"),
    (AUTOCOMPLETE, ask("requested_by", institution="NORTH"), "Only the resync form's course and learner"),
    (AUTOCOMPLETE, {"app_label": "auth", "model_name": "user", "field_name": "groups", "institution": "NORTH"}, "Only the resync"),
    (ACTIVITIES, {"institution": "NORTH"}, "Choose the course first."),
    (ACTIVITIES, {"institution": "NORTH", "course": "SOUTH_COURSE"}, "No such course in this institution."),
    (ACTIVITIES, {"institution": "NORTH", "course": "NETWORKING", "page": "-1"}, "pages are numbered from 1"),
])
def test_malformed_or_cross_institution_lookups_are_refused_with_a_reason(url, params, reason, desk, client_for):
    names = {"NORTH": desk.north.pk, "SOUTH_COURSE": desk.south_course.pk, "NETWORKING": desk.networking.pk}
    params = {key: names.get(value, value) for key, value in params.items()}
    response = client_for(SUPPORT).get(url, params)
    assert response.status_code == 400 and reason in response.json()["error"]


@pytest.mark.parametrize("role", [READ_ONLY, INTEGRATION])
def test_roles_that_cannot_resync_cannot_look_up_either(role, desk, client_for):
    client = client_for(role)
    assert client.get(AUTOCOMPLETE, ask("course", institution=desk.north.pk)).status_code == 403
    assert client.get(ACTIVITIES, {"institution": desk.north.pk, "course": desk.networking.pk}).status_code == 403


def test_the_form_shows_choices_by_name_and_never_asks_for_an_id(desk, client_for):
    page = client_for(SUPPORT).get(resync_url(institution=desk.north, course=desk.networking, lti_user=desk.ada,
                                              activity_key="102", choose=True)).content.decode()
    assert "Networking 101 (canvas-net-101)</option>" in page
    assert "Ada Lovelace &lt;ada.lovelace@north.example.edu&gt; · canvas-4242</option>" in page
    assert ">Quiz: subnetting</option>" in page
    assert 'class="resync-autocomplete"' in page and "gradesync/resync_form.js" in page
    assert 'type="number"' not in page and "(id)" not in page and "LTI user id" not in page


@pytest.mark.parametrize("posted,error", [
    ({"institution": "NORTH", "course": "SOUTH_COURSE"}, "That course is not one of North College"),
    ({"institution": "NORTH", "course": "NETWORKING", "lti_user": "BOB"}, "That learner has no grades in this course."),
    ({"institution": "NORTH", "course": "SECURITY", "activity_key": "101"}, "That activity has no grades in this course."),
    ({"institution": "NORTH", "lti_user": "ADA"}, "choose the course"),
    ({"institution": "NORTH", "course": "999999"}, "Select a valid choice"),
])
def test_the_form_refuses_a_scope_outside_the_institution_or_course_and_writes_nothing(posted, error, desk, client_for):
    names = {"NORTH": desk.north.pk, "SOUTH_COURSE": desk.south_course.pk, "NETWORKING": desk.networking.pk,
             "SECURITY": desk.security.pk, "BOB": desk.bob.pk, "ADA": desk.ada.pk}
    data = {key: names.get(value, value) for key, value in posted.items()}
    response = client_for(SUPPORT).post(RESYNC, {**data, "confirmed": "yes"})
    assert response.status_code == 200 and error in response.content.decode()
    assert not ResyncJob.objects.exists() and not AuditEntry.objects.filter(action="resync.requested").exists()


def test_a_learner_found_by_name_is_resynced_in_their_course(desk, client_for):
    client = client_for(SUPPORT)
    picked = client.get(AUTOCOMPLETE, ask("lti_user", term="lovelace@", institution=desk.north.pk,
                                          course=desk.networking.pk)).json()["results"][0]["id"]
    data = {"institution": desk.north.pk, "course": desk.networking.pk, "lti_user": picked}
    preview = client.post(RESYNC, data).content.decode()
    assert "Ada Lovelace" in preview and "<strong>2</strong> grades will be sent again" in preview
    done = client.post(RESYNC, {**data, "confirmed": "yes"})
    job = ResyncJob.objects.get()
    assert done.url == reverse("admin:gradesync_resyncjob_change", args=[job.pk])
    assert (job.course, job.lti_user, job.estimated) == (desk.networking, desk.ada, 2)


# --- 2. Act from where you stand --------------------------------------------------------------


def _offered(page: str, element_id: str) -> str:
    """The href of the link with this id on the page ('' when not offered)."""
    import re

    found = re.search(rf'<a href="([^"]+)"[^>]*id="{element_id}"|id="{element_id}"[^>]*href="([^"]+)"', page)
    return (found.group(1) or found.group(2)).replace("&amp;", "&") if found else ""


def test_each_page_offers_resync_for_where_support_stands(desk, client_for):
    client = client_for(SUPPORT)
    delivery = Delivery.objects.get(lti_user=desk.ada, activity_key="102")
    pages = {
        "resync-course": reverse("admin:institutions_course_change", args=[desk.networking.pk]),
        "resync-institution": reverse("admin:institutions_institution_change", args=[desk.north.pk]),
        "resync-learner": reverse("admin:lti_tool_ltiuser_change", args=[desk.ada.pk]),
        "resync-delivery": reverse("admin:gradesync_delivery_change", args=[delivery.pk]),
    }
    landed = {}
    for element_id, url in pages.items():
        link = _offered(client.get(url).content.decode(), element_id)
        assert link.startswith(RESYNC), element_id
        landed[element_id] = client.get(link).content.decode()
    # The course's and the learner's pages open the form filled in, to pick a learner or an activity by name.
    assert "Networking 101 (canvas-net-101)</option>" in landed["resync-course"] and 'id="resync-form"' in landed["resync-course"]
    assert "Ada Lovelace &lt;ada.lovelace" in landed["resync-learner"]
    assert f'<option value="{desk.north.pk}" selected>' in landed["resync-learner"]  # all her grades are North's
    assert f'<option value="{desk.north.pk}" selected>' in landed["resync-institution"]
    # The delivery's opens on the preview of that one grade, ready to confirm.
    assert "<strong>1</strong> grade will be sent again" in landed["resync-delivery"] and f"delivery #{delivery.pk}" in landed["resync-delivery"]


def test_the_learner_pages_rows_and_the_why_page_resync_each_scope_from_its_preview(desk, client_for):
    client = client_for(SUPPORT)
    learner_page = client.get(reverse("admin:lti_tool_ltiuser_change", args=[desk.ada.pk])).content.decode()
    assert learner_page.count('class="resync"') == 2  # one per (course, activity)
    why = client.get(reverse("gradesync_why"), {"user": desk.ada.pk, "course": desk.networking.pk, "activity": "102"})
    links = why.context["resync_links"]
    assert [label for label, _url in links] == [
        "Resync this grade…", "Resync this learner in the course…", "Resync this activity in the course…", "Resync the course…"]
    counts = []
    for _label, url in links:
        assert url in why.content.decode().replace("&amp;", "&")
        counts.append(client.get(url).context["preview"].grades)
    assert counts == [1, 2, 1, 3]  # Ada's quiz 102; Ada's two; quiz 102 (Ada alone took it); the course's three


def test_an_activity_links_page_resyncs_that_activity_in_its_course(desk, client_for):
    from tests.courseware_factories import ActivityFactory, ActivityLinkFactory

    link = ActivityLinkFactory(course=desk.networking, activity=ActivityFactory(title="Lab: VLANs"))
    grade(desk.networking, desk.grace, str(link.activity_id), "Lab: VLANs", ["0.6"], sent="0.6")
    url = reverse("admin:courseware_activitylink_change", args=[link.pk])
    support = client_for(SUPPORT)
    preview = support.get(_offered(support.get(url).content.decode(), "resync-activity"))
    assert preview.context["preview"].grades == 1  # Grace's grade of that activity, in that course
    assert _offered(client_for(READ_ONLY).get(url).content.decode(), "resync-activity") == ""


def test_the_delivery_lists_actions_land_on_the_preview(desk, client_for):
    client = client_for(SUPPORT)
    delivery = Delivery.objects.get(lti_user=desk.ada, activity_key="101")
    for action, grades in [("resync_delivery", 1), ("resync_learner", 2), ("resync_activity", 2), ("resync_course", 3)]:
        response = client.post("/admin/gradesync/delivery/", {"action": action, "_selected_action": [delivery.pk]}, follow=True)
        assert response.context["confirm"] and response.context["preview"].grades == grades, action
        assert "Yes, resync" in response.content.decode()
    assert not ResyncJob.objects.exists()  # a preview writes nothing


def test_a_refusal_because_a_job_is_running_links_to_that_job(desk, client_for):
    client = client_for(SUPPORT)
    data = {"institution": desk.north.pk, "course": desk.networking.pk, "confirmed": "yes"}
    assert client.post(RESYNC, data).status_code == 302
    running = ResyncJob.objects.get()
    again = client.post(RESYNC, data, follow=True).content.decode()
    job_url = reverse("admin:gradesync_resyncjob_change", args=[running.pk])
    assert "already queued or running" in again and f'<a href="{job_url}">Open resync #{running.pk}</a>' in again
    assert ResyncJob.objects.count() == 1


# --- 3. A policy change that finishes the job ------------------------------------------------


def policy_page(client, institution) -> str:
    return client.get(reverse("admin:institutions_institution_grade_policy", args=[institution.pk])).content.decode()


def _ticked(page: str) -> bool:
    import re

    box = re.search(r'<input type="checkbox" name="resync_affected"[^>]*>', page)
    assert box, "the resync box is offered"
    return "checked" in box.group(0)


def test_resync_is_ticked_by_default_when_the_change_affects_grades(desk, client_for):
    client = client_for(SUPPORT)
    page = policy_page(client, desk.north)
    assert 'id="policy-changed">2</strong> of 4 grades' in page and _ticked(page)
    response = client.post(reverse("admin:institutions_institution_grade_policy", args=[desk.north.pk]),
                           {"grade_policy": GradePolicy.MOST_RECENT, "resync_affected": "on"})
    job = ResyncJob.objects.get()
    assert response.url == reverse("admin:gradesync_resyncjob_change", args=[job.pk])
    assert (job.institution, job.only_changed, job.estimated, job.course) == (desk.north, True, 2, None)


def test_when_nothing_is_affected_resync_is_not_ticked_and_no_job_is_created(desk, client_for):
    client = client_for(SUPPORT)
    # The LMS already holds each most recent grade of North (sent by hand, say): Most Recent changes nothing.
    for delivery in Delivery.objects.filter(institution=desk.north):
        latest = Result.objects.filter(course=delivery.course, lti_user=delivery.lti_user,
                                       activity_key=delivery.activity_key).latest("completed_at")
        Delivery.objects.filter(pk=delivery.pk).update(score=latest.score)
    page = policy_page(client, desk.north)
    assert 'id="policy-changed">0</strong>' in page and not _ticked(page) and "no resync is needed" in page
    # Even when ticked by hand, a change that affects nothing creates no job.
    response = client.post(reverse("admin:institutions_institution_grade_policy", args=[desk.north.pk]),
                           {"grade_policy": GradePolicy.MOST_RECENT, "resync_affected": "on"}, follow=True)
    desk.north.refresh_from_db()
    assert desk.north.grade_policy == GradePolicy.MOST_RECENT and not ResyncJob.objects.exists()
    assert "nothing to resync" in response.content.decode()


def test_after_a_change_without_resync_the_institution_and_why_pages_say_how_many_grades_differ(desk, client_for):
    client = client_for(SUPPORT)
    institution_url = reverse("admin:institutions_institution_change", args=[desk.north.pk])
    assert 'id="policy-drift"' not in client.get(institution_url).content.decode()  # never changed: nothing to say
    client.post(reverse("admin:institutions_institution_grade_policy", args=[desk.north.pk]), {"grade_policy": GradePolicy.MOST_RECENT})
    assert not ResyncJob.objects.exists()

    page = client.get(institution_url).content.decode()
    assert "<strong>2</strong> grades in the LMS now differ from the policy" in page
    link = _offered(page, "policy-drift-resync")
    preview = client.get(link)
    assert preview.context["preview"].grades == 2 and "only grades that differ from the last sent" in preview.content.decode()
    why = client.get(reverse("gradesync_why"), {"user": desk.grace.pk, "course": desk.security.pk, "activity": "201"}).content.decode()
    assert "<strong>2</strong> grades of North College in the LMS now differ from the grade policy" in why
    # South's page says nothing: its policy did not change.
    assert 'id="policy-drift"' not in client.get(reverse("admin:institutions_institution_change", args=[desk.south.pk])).content.decode()

    client.post(RESYNC, {"institution": desk.north.pk, "only_changed": "on", "confirmed": "yes"})
    assert ResyncJob.objects.get().estimated == 2
    assert 'id="policy-drift"' not in client.get(institution_url).content.decode()  # the resync was asked for


# --- 7. Nothing offered that a role cannot finish --------------------------------------------


@pytest.mark.parametrize("role", [READ_ONLY, INTEGRATION])
def test_roles_without_resync_are_offered_no_resync_anywhere(role, desk, client_for):
    client = client_for(SUPPORT)
    client.post(reverse("admin:institutions_institution_grade_policy", args=[desk.north.pk]), {"grade_policy": GradePolicy.MOST_RECENT})
    client = client_for(role)
    delivery = Delivery.objects.get(lti_user=desk.ada, activity_key="101")
    pages = [
        reverse("admin:institutions_course_change", args=[desk.networking.pk]),
        reverse("admin:institutions_institution_change", args=[desk.north.pk]),
        reverse("admin:lti_tool_ltiuser_change", args=[desk.ada.pk]),
        reverse("admin:gradesync_delivery_change", args=[delivery.pk]),
        reverse("admin:gradesync_delivery_changelist"),
        reverse("admin:gradesync_resyncjob_changelist"),
        reverse("gradesync_why") + f"?user={desk.ada.pk}&course={desk.networking.pk}&activity=101",
    ]
    for url in pages:
        response = client.get(url)
        page = response.content.decode()
        assert response.status_code == 200, url
        assert RESYNC not in page and "Resync…" not in page and "Resync this" not in page, url
        assert 'name="action"' not in page, url  # the delivery list offers no action at all
    # They still read that the LMS differs from the policy, without a link they could not follow.
    page = client.get(reverse("admin:institutions_institution_change", args=[desk.north.pk])).content.decode()
    assert "now differ from the policy" in page and 'id="policy-drift-resync"' not in page
