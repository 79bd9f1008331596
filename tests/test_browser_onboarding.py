"""A new integration engineer onboards an LMS in the browser, to a student's grade in its gradebook:
a "Moodle" through Dynamic Registration (the link is the only thing typed), a "Canvas" through the
developer key JSON URL (the Canvas order: draft, key, client ID and deployment ID typed back).

Both sides run in one live server: the tool's admin, and the sandbox LMS playing the LMS admin,
the instructor who places a quiz and the student who takes it.
"""
from __future__ import annotations

import re

import pytest
from django.apps import apps as django_apps
from django.urls import reverse
from lti_tool.models import Key, LtiDeployment, LtiRegistration

from institutions.models import DeploymentOwnership, RegisteredVia
from institutions.roles import INTEGRATION, sync_staff_roles
from sandbox_lms import api
from sandbox_lms.models import Role, SandboxCourse
from tests.browser import ARTIFACTS, browser_marks, follow, log_in, page, staff_roles  # noqa: F401 (fixtures)
from tests.courseware.test_launch_flow import catalog  # noqa: F401 (fixture)

pytestmark = browser_marks

QUIZ_ANSWERS = [1, 2, 0, 3]  # all right: the quiz of tests/courseware/test_launch_flow.py's catalog


@pytest.fixture
def lms_platform(live_server):
    Key.objects.filter(is_active=True).exists() or Key.objects.generate()
    sync_staff_roles(django_apps)
    return api.create_platform(base_url=f"{live_server.url}/sandbox-lms")


def sandbox(live_server, path: str = "") -> str:
    return f"{live_server.url}/sandbox-lms/{path}"


def act_as(page, live_server, name: str) -> None:
    page.goto(sandbox(live_server))
    page.locator("tr", has_text=name).locator("button[name=user]").click()
    page.wait_for_selector(f"text=Courses of {name}")


def place_the_quiz(page, live_server, course: SandboxCourse, quiz, points: str) -> None:
    """The instructor: Add activity from tool → the picker → the quiz, graded, at `points`."""
    act_as(page, live_server, course.enrolments.get(role=Role.INSTRUCTOR).user.name)
    page.click(f"a:has-text(\"{course.title}\")")
    page.click("text=Add activity from tool")
    page.check(f"input[name=activity][value='{quiz.pk}']")
    page.check(f"input[name=graded-{quiz.pk}]")
    page.fill(f"input[name=points-{quiz.pk}]", points)
    page.click("text=Add to course")
    page.wait_for_selector(f"#added li:has-text('out of {points}')")


def take_the_quiz(page, live_server, course: SandboxCourse, quiz) -> None:
    act_as(page, live_server, course.enrolments.get(role=Role.LEARNER).user.name)
    page.click(f"a:has-text(\"{course.title}\")")
    page.locator("tr", has_text=quiz.title).locator("text=Launch").click()
    page.wait_for_selector(f"h1:has-text('{quiz.title}'), h2:has-text('{quiz.title}')")
    if page.locator("input[type=radio]").count() == 0:
        page.click("button:has-text('Start')")
    fields = list(dict.fromkeys(page.locator("input[type=radio]").evaluate_all("els => els.map(e => e.name)")))
    for field, answer in zip(fields, QUIZ_ANSWERS):
        page.check(f"input[name='{field}'][value='{answer}']")
    page.click("button:has-text('Submit answers')")
    page.wait_for_selector("text=/score|result/i")


def grade_in_the_gradebook(course: SandboxCourse, quiz) -> float | None:
    line_item = course.line_items.get(label=quiz.title)
    student = course.enrolments.get(role=Role.LEARNER).user
    result = api.grades(line_item=line_item).get(student.sub)
    return result.result if result else None


def test_moodle_by_dynamic_registration_with_only_the_link_typed(page, live_server, lms_platform, two_institutions, staff_user, catalog):  # noqa: F811
    north, _ = two_institutions
    _, quiz, _ = catalog

    # Our integration engineer makes a one-time link for North College's Moodle.
    log_in(page, live_server, staff_user, INTEGRATION)
    page.goto(live_server.url + reverse("admin:institutions_registrationinvitation_add"))
    page.select_option("#id_institution", str(north.pk))
    page.select_option("#id_lms_family", "moodle")
    page.check("#id_activate_on_registration")
    page.click("input[type=submit]")
    link = page.input_value("#invitation-link")
    assert "/lti/register/" in link

    # North's Moodle admin pastes it; the tool registers itself in a frame and closes it; the admin enables the tool.
    page.goto(sandbox(live_server, "tools/add/"))
    page.fill("input[name=tool_link]", link)
    page.select_option("select[name=profile]", "moodle")
    page.click("button:has-text('Register')")
    row = page.locator("#dynamic-registrations tr", has_text="Pending")
    row.wait_for()
    row.locator("button:has-text('Enable')").click()
    page.locator("#dynamic-registrations tr", has_text="Enabled").locator("button:has-text('Create a course')").click()
    page.wait_for_selector("#message")
    page.screenshot(path=str(ARTIFACTS / "onboarding-moodle-registered.png"), full_page=True)

    registration = LtiRegistration.objects.get(profile__registered_via=RegisteredVia.DYNAMIC)
    deployment = LtiDeployment.objects.get(registration=registration)
    assert deployment.is_active and DeploymentOwnership.objects.get(deployment=deployment).institution == north
    assert registration.profile.lms_family == "moodle"

    course = SandboxCourse.objects.get(deployment__registration__client_id=registration.client_id)
    place_the_quiz(page, live_server, course, quiz, "20")
    take_the_quiz(page, live_server, course, quiz)
    assert grade_in_the_gradebook(course, quiz) == pytest.approx(20)
    page.goto(sandbox(live_server, f"courses/{course.pk}/gradebook/"))
    page.screenshot(path=str(ARTIFACTS / "onboarding-moodle-gradebook.png"), full_page=True)


def test_canvas_through_the_developer_key_json_url(page, live_server, lms_platform, two_institutions, staff_user, catalog):  # noqa: F811
    north, _ = two_institutions
    _, quiz, _ = catalog

    # A draft with the Canvas preset, opened for North: its hand-off page gives the JSON URL at once.
    log_in(page, live_server, staff_user, INTEGRATION)
    add = reverse("admin:lti_tool_ltiregistration_add")
    page.goto(f"{live_server.url}{add}?preset=canvas&institution={north.pk}")
    page.fill("#id_issuer", lms_platform.issuer)
    page.fill("#id_auth_url", lms_platform.url("auth/"))
    page.fill("#id_token_url", lms_platform.url("token/"))
    page.fill("#id_keyset_url", lms_platform.url("jwks/"))
    page.click("input[name=_save]")
    json_url = page.inner_text("#cfg-canvas-json-url").strip()
    assert json_url.endswith("/canvas.json")
    page.screenshot(path=str(ARTIFACTS / "onboarding-canvas-handoff.png"), full_page=True)
    draft = LtiRegistration.objects.get()

    # The Canvas admin: LTI Key → Enter URL, then installs it; Canvas shows the key's number and the deployment id.
    page.goto(sandbox(live_server, "tools/add/"))
    page.fill("input[name=json_url]", json_url)
    page.click("button:has-text('Save key and install')")
    said = page.inner_text("#message")
    client_id, deployment_id = re.search(r"client ID (\S+) and the deployment ID (\S+)\.", said).groups()
    page.locator("#dynamic-registrations tr", has_text=client_id).locator("button:has-text('Create a course')").click()
    page.wait_for_selector("#message")

    # Back in our admin: the client ID and the deployment ID, typed in; the draft goes live.
    page.goto(live_server.url + reverse("admin:lti_tool_ltiregistration_change", args=[draft.pk]))
    page.fill("#id_client_id", client_id)
    page.click("text=Add another LTI deployment")
    page.fill("#id_deployments-0-deployment_id", deployment_id)
    page.check("#id_deployments-0-is_active")
    page.select_option("#id_deployments_institution", str(north.pk))
    follow(page, "input[name=_save]")
    draft.refresh_from_db()
    assert draft.client_id == client_id and draft.is_active

    course = SandboxCourse.objects.get(deployment__deployment_id=deployment_id)
    place_the_quiz(page, live_server, course, quiz, "15")
    take_the_quiz(page, live_server, course, quiz)
    assert grade_in_the_gradebook(course, quiz) == pytest.approx(15)
