"""What a person sees in the browser, the request log, and the demo wiring of `make run`."""
from __future__ import annotations

from io import StringIO

import pytest
import requests
from lti_tool.models import LtiDeployment, LtiRegistration

from institutions.models import Institution, RegistrationProfile
from sandbox_lms import api
from sandbox_lms.demo import DEMO_CLIENT_ID, load_demo

from .conftest import ServiceClient

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_person_picks_a_user_and_sees_courses_launches_gradebook_and_log(sandbox, live_server):
    ServiceClient(sandbox).post_score(sandbox.students[0], scoreGiven=3, scoreMaximum=4)
    browser = requests.Session()
    base = f"{live_server.url}/sandbox-lms/"

    home = browser.get(base, timeout=5)
    browser.post(f"{base}act-as/", data={"user": sandbox.instructor.pk}, timeout=5)
    course = browser.get(f"{base}courses/{sandbox.course.pk}/", timeout=5)
    gradebook = browser.get(f"{base}courses/{sandbox.course.pk}/gradebook/", timeout=5)
    launch = browser.get(f"{base}links/{sandbox.resource_link.pk}/launch/", timeout=5)
    log = browser.get(f"{base}log/", timeout=5)

    assert "Not for production" in home.text and sandbox.instructor.name in home.text
    assert "Add activity from tool" in course.text and "Chapter 1 quiz" in course.text
    assert "75.00" in gradebook.text and sandbox.students[0].name in gradebook.text
    action, fields = api.parse_autopost(launch.text)
    assert action == sandbox.registration.login_url and fields["login_hint"] == sandbox.instructor.sub
    assert "/scores" in log.text and "200" in log.text


def test_a_student_sees_no_gradebook_and_a_stranger_no_course(sandbox, live_server):
    browser = requests.Session()
    base = f"{live_server.url}/sandbox-lms/"
    browser.post(f"{base}act-as/", data={"user": sandbox.students[0].pk}, timeout=5)
    outsider = api.create_user(platform=sandbox.platform, name="Outsider")

    course = browser.get(f"{base}courses/{sandbox.course.pk}/", timeout=5)
    gradebook = browser.get(f"{base}courses/{sandbox.course.pk}/gradebook/", timeout=5)
    browser.post(f"{base}act-as/", data={"user": outsider.pk}, timeout=5)
    other = browser.get(f"{base}courses/{sandbox.course.pk}/", timeout=5)

    assert course.status_code == 200 and "Add activity from tool" not in course.text
    assert gradebook.status_code == 404 and other.status_code == 404


def test_the_request_log_keeps_what_the_tool_sent_and_what_the_sandbox_answered(sandbox):
    ServiceClient(sandbox).post_score(sandbox.instructor)

    entry = api.request_log(registration=sandbox.registration, kind="scores")[-1]

    assert entry.method == "POST" and entry.status == 422
    assert sandbox.instructor.sub in entry.request_body
    assert "User not found in course" in entry.response_body
    assert entry.request_headers["Content-Type"] == api.SCORE_MEDIA_TYPE


def test_the_demo_seeds_the_sandbox_and_registers_it_with_the_tool():
    Institution.objects.get_or_create(slug="demo-college", defaults={"name": "Demo Community College"})

    load_demo(base_url="http://127.0.0.1:8000", stdout=StringIO())
    load_demo(base_url="http://127.0.0.1:8000", stdout=StringIO())  # idempotent

    registration = LtiRegistration.objects.get(client_id=DEMO_CLIENT_ID)
    deployment = LtiDeployment.objects.get(registration=registration)
    assert registration.issuer == "http://127.0.0.1:8000/sandbox-lms"
    assert registration.auth_url == "http://127.0.0.1:8000/sandbox-lms/auth/"
    assert deployment.is_active and deployment.ownership.institution.slug == "demo-college"
    assert RegistrationProfile.objects.get(registration=registration).lms_family == "canvas"
    course = api.SandboxCourse.objects.get()
    assert course.starts_at and course.ends_at
    assert sorted(course.enrolments.values_list("role", flat=True)) == ["instructor", "learner", "learner", "learner"]
    assert course.deployment.registration.login_url == f"http://127.0.0.1:8000/lti/login/{registration.uuid}/"
