"""LTI Dynamic Registration end to end over real HTTP: the sandbox LMS (Moodle-like, Canvas-like) opens our
one-time link as an LMS admin's browser would, we register, and a launch through the new registration works.
Every bad input gives the LMS's window a 4xx page with a reason, and nothing is half-saved."""
from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from django.utils import timezone
from lti_tool.models import Key, LtiDeployment, LtiRegistration

from institutions import services
from institutions.dynamic_registration.invitations import create_invitation, token_digest
from institutions.models import (
    AuditEntry,
    DeploymentOwnership,
    LmsFamily,
    RegisteredVia,
    RegistrationInvitation,
    RegistrationProfile,
)
from institutions.roles import INTEGRATION, READ_ONLY
from institutions.tool_configuration import INSTRUCTOR_TOOLS_PAGE, TOOL_PAGE_PARAM, tool_urls
from sandbox_lms import api, dynamic_registration as sandbox_dr
from sandbox_lms.models import SandboxRegistration
from sandbox_lms.protocol import Refusal
from tests import lms

pytestmark = pytest.mark.django_db(transaction=True)

TOOL_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-tool-configuration"
NOTICE_HANDLERS = "https://purl.imsglobal.org/spec/lti/scope/noticehandlers"


@pytest.fixture(autouse=True)
def _fresh_sandbox():
    api.forget_caches()
    yield
    api.forget_caches()


@pytest.fixture
def platform(live_server):
    """A sandbox LMS served by live_server with no tool registered yet."""
    Key.objects.filter(is_active=True).exists() or Key.objects.generate()
    return api.create_platform(base_url=f"{live_server.url}/sandbox-lms")


@pytest.fixture
def north(two_institutions):
    return two_institutions[0]


def saved_counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (LtiRegistration, LtiDeployment, RegistrationProfile, DeploymentOwnership)
    }


def new_link(live_server, institution, **kwargs: Any) -> tuple[RegistrationInvitation, str]:
    return create_invitation(institution=institution, actor=None, base_url=live_server.url, **kwargs)


def open_link(link: str, *, openid_configuration: str | None, registration_token: str | None = None) -> requests.Response:
    """What the LMS admin's browser does when the LMS opens our link in its frame."""
    query = {k: v for k, v in (("openid_configuration", openid_configuration),
                               ("registration_token", registration_token)) if v is not None}
    return lms.browser().get(f"{link}?{urlencode(query)}" if query else link, timeout=30)


def open_from_sandbox(link: str, platform, profile: str) -> requests.Response:
    return open_link(
        link,
        openid_configuration=sandbox_dr.openid_configuration_url(platform, profile),
        registration_token=sandbox_dr.issue_registration_token(platform, profile),
    )


def new_course(sandbox_registration: SandboxRegistration) -> SimpleNamespace:
    """A course on the new deployment with an instructor: what the LMS has once the tool is in use."""
    deployment = sandbox_registration.deployments.get()
    course = api.create_course(deployment=deployment, title="Networking Fundamentals")
    instructor = api.create_user(platform=sandbox_registration.platform, name="Irene Instructor", email="irene@example.edu")
    api.enrol(course=course, user=instructor, role=api.Role.INSTRUCTOR)
    return SimpleNamespace(course=course, instructor=instructor)


def open_picker(course: SimpleNamespace) -> requests.Response:
    course.course.refresh_from_db()  # the registration as the sandbox holds it now (enabled or not)
    initiation = api.start_deep_linking(user=course.instructor, course=course.course)
    return api.follow_launch(lms.browser(), initiation)


def assert_frameable_by_the_lms(response: requests.Response) -> None:
    assert "frame-ancestors *" in response.headers.get("Content-Security-Policy", ""), response.headers
    assert "X-Frame-Options" not in response.headers


# --- End to end -----------------------------------------------------------------------------------


def test_moodle_registers_pending_then_launches_once_both_sides_activate(live_server, platform, north):
    invitation, link = new_link(live_server, north, lms_family=LmsFamily.MOODLE)

    page = open_from_sandbox(link, platform, "moodle")

    assert page.status_code == 200, page.text
    assert "Registered with Moodle" in page.text
    assert "pending until activated" in page.text
    assert '"org.imsglobal.lti.close"' in page.text and "window.opener || window.parent" in page.text
    assert_frameable_by_the_lms(page)
    sandbox_registration = SandboxRegistration.objects.get(registered_dynamically=True)
    registration = LtiRegistration.objects.get()
    assert (registration.issuer, registration.client_id) == (platform.issuer, sandbox_registration.client_id)
    assert registration.name == "North College — Moodle"
    assert registration.auth_url == platform.url("auth/") and registration.token_url == platform.url("token/")
    assert registration.keyset_url == platform.url("jwks/")
    assert registration.profile.lms_family == LmsFamily.MOODLE
    assert registration.profile.registered_via == RegisteredVia.DYNAMIC
    assert registration.profile.platform_configuration["product_family_code"] == "moodle"
    deployment = LtiDeployment.objects.get(registration=registration)
    assert deployment.deployment_id == str(sandbox_registration.pk)  # Moodle: the tool type's id
    assert not deployment.is_active
    assert deployment.ownership.institution == north
    invitation.refresh_from_db()
    assert invitation.used_at is not None and invitation.registration == registration

    # What the sandbox LMS holds is our URLs, our scopes (no PNS: Moodle offers none), our custom parameters.
    urls = tool_urls(live_server.url, registration)
    assert sandbox_registration.login_url == urls["login"]
    assert sandbox_registration.launch_url == urls["launch"] and sandbox_registration.jwks_url == urls["jwks"]
    assert sandbox_registration.deep_linking_url == urls["deep_linking"]
    assert not sandbox_registration.is_enabled
    assert NOTICE_HANDLERS not in sandbox_registration.scopes and len(sandbox_registration.scopes) == 5
    assert sandbox_registration.custom["course_start_date"] == "$CourseSection.timeFrame.begin"

    course = new_course(sandbox_registration)
    with pytest.raises(Refusal, match="pending"):
        api.start_deep_linking(user=course.instructor, course=course.course)

    # The Moodle admin enables the tool; our side still refuses while the deployment is pending.
    enabled = lms.browser().post(f"{platform.url('tools/')}{sandbox_registration.pk}/enable/", timeout=10)
    assert enabled.status_code == 200
    refused = open_picker(course)
    assert refused.status_code != 200 or "Add" not in refused.text

    services.assign_deployment(deployment=deployment, institution=north, activate=True, acting_user=None)
    picker = open_picker(course)
    assert picker.status_code == 200, picker.text[:800]
    assert "csrfmiddlewaretoken" in picker.text


def test_canvas_registers_active_with_canvas_fields_and_notices_and_launches_at_once(live_server, platform, north):
    invitation, link = new_link(live_server, north, lms_family=LmsFamily.CANVAS, activate_on_registration=True)

    page = open_from_sandbox(link, platform, "canvas")

    assert page.status_code == 200, page.text
    assert "Registered with Canvas" in page.text and "active" in page.text
    sandbox_registration = SandboxRegistration.objects.get(registered_dynamically=True)
    assert sandbox_registration.is_enabled
    posted = sandbox_registration.tool_configuration
    tool = posted[TOOL_CONFIGURATION]
    assert tool["https://canvas.instructure.com/lti/privacy_level"] == "public"
    assert tool["custom_parameters"]["course_start_date"] == "$Canvas.course.startAt"
    navigation = [m for m in tool["messages"] if "course_navigation" in m.get("placements", [])]
    assert navigation and navigation[0]["custom_parameters"] == {TOOL_PAGE_PARAM: INSTRUCTOR_TOOLS_PAGE}
    assert {m["type"] for m in tool["messages"]} == {"LtiResourceLinkRequest", "LtiDeepLinkingRequest"}
    assert NOTICE_HANDLERS in posted["scope"].split() and NOTICE_HANDLERS in sandbox_registration.scopes
    assert posted["token_endpoint_auth_method"] == "private_key_jwt"
    registration = LtiRegistration.objects.get(client_id=sandbox_registration.client_id)
    assert registration.profile.lms_family == LmsFamily.CANVAS
    deployment = registration.deployments.get()
    assert deployment.is_active and deployment.ownership.institution == north
    assert deployment.deployment_id == sandbox_registration.deployments.get().deployment_id

    picker = open_picker(new_course(sandbox_registration))
    assert picker.status_code == 200, picker.text[:800]
    assert "csrfmiddlewaretoken" in picker.text


def test_a_reload_after_success_registers_nothing_twice_and_names_the_registration(live_server, platform, north):
    _, link = new_link(live_server, north)
    assert open_from_sandbox(link, platform, "generic").status_code == 200
    before = saved_counts()

    again = open_from_sandbox(link, platform, "generic")

    assert again.status_code == 409
    assert "already used" in again.text and "North College — " in again.text
    assert saved_counts() == before
    assert SandboxRegistration.objects.count() == 1  # the platform was never asked again
    assert_frameable_by_the_lms(again)


# --- Bad links ------------------------------------------------------------------------------------


def test_an_expired_link_is_refused_and_nothing_is_saved(live_server, platform, north):
    invitation, link = new_link(live_server, north)
    RegistrationInvitation.objects.filter(pk=invitation.pk).update(
        created_at=timezone.now() - timedelta(days=8), expires_at=timezone.now() - timedelta(days=1)
    )
    before = saved_counts()

    page = open_from_sandbox(link, platform, "moodle")

    assert page.status_code == 410 and "expired" in page.text and "new link" in page.text
    assert saved_counts() == before and not SandboxRegistration.objects.exists()


def test_an_unknown_token_is_refused(live_server, platform):
    before = saved_counts()
    page = open_from_sandbox(f"{live_server.url}/lti/register/not-a-token/", platform, "moodle")
    assert page.status_code == 404 and "not known" in page.text
    assert saved_counts() == before and not SandboxRegistration.objects.exists()


def test_a_link_opened_without_the_lms_says_how_to_use_it(live_server, north):
    invitation, link = new_link(live_server, north)
    page = open_link(link, openid_configuration=None)
    assert page.status_code == 400 and "openid_configuration" in page.text
    invitation.refresh_from_db()
    assert invitation.used_at is None and "openid_configuration" in invitation.last_refusal


# --- Bad platforms (a fake platform on another port of this machine) ----------------------------------


class FakePlatform:
    """A platform that says whatever a test wants: its openid configuration and its answer to the POST."""

    def __init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, fake.configuration_body())

            def do_POST(self) -> None:
                fake.posted.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self._send(*fake.answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.configuration: Any = {
            "issuer": self.base,
            "authorization_endpoint": f"{self.base}/auth",
            "token_endpoint": f"{self.base}/token",
            "jwks_uri": f"{self.base}/jwks",
            "registration_endpoint": f"{self.base}/register",
            "scopes_supported": ["openid"],
            "https://purl.imsglobal.org/spec/lti-platform-configuration": {"product_family_code": "moodle", "version": "4.5"},
        }
        self.raw_configuration: bytes | None = None
        self.answer: tuple[int, bytes] = (200, json.dumps({"client_id": "fake-client", TOOL_CONFIGURATION: {"deployment_id": "7"}}).encode())
        self.posted: list[bytes] = []
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def configuration_body(self) -> bytes:
        return self.raw_configuration if self.raw_configuration is not None else json.dumps(self.configuration).encode()

    @property
    def url(self) -> str:
        return f"{self.base}/.well-known/openid-configuration"


@pytest.fixture
def fake_platform():
    fake = FakePlatform()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def refused_with_nothing_saved(live_server, institution, fake: FakePlatform, *, says: str, status: int = 400) -> RegistrationInvitation:
    invitation, link = new_link(live_server, institution)
    before = saved_counts()
    page = open_link(link, openid_configuration=fake.url, registration_token="lms-registration-token-123")
    assert page.status_code == status, page.text
    assert says in page.text, page.text
    assert "lms-registration-token-123" not in page.text
    assert_frameable_by_the_lms(page)
    assert saved_counts() == before
    invitation.refresh_from_db()
    assert invitation.used_at is None and invitation.registration is None
    assert says in invitation.last_refusal and "lms-registration-token-123" not in invitation.last_refusal
    return invitation


def test_the_fake_platform_registers_when_it_behaves(live_server, north, fake_platform):
    # The control case: the same fake platform, well-behaved, is registered.
    _, link = new_link(live_server, north)
    page = open_link(link, openid_configuration=fake_platform.url, registration_token="tok")
    assert page.status_code == 200, page.text
    assert LtiRegistration.objects.filter(client_id="fake-client", issuer=fake_platform.base).exists()


def test_an_issuer_on_another_host_than_the_configuration_is_refused(live_server, north, fake_platform):
    fake_platform.configuration["issuer"] = f"http://localhost:{fake_platform.server.server_port}"
    refused_with_nothing_saved(live_server, north, fake_platform, says="on another host")
    assert fake_platform.posted == []  # the registration token never left


def test_canvas_shared_issuer_is_accepted_from_the_schools_own_host(live_server, north, fake_platform):
    # Every hosted Canvas signs as https://canvas.instructure.com while serving its configuration from the school's host.
    fake_platform.configuration["issuer"] = "https://canvas.instructure.com"
    fake_platform.configuration["https://purl.imsglobal.org/spec/lti-platform-configuration"]["product_family_code"] = "canvas"
    _, link = new_link(live_server, north)
    page = open_link(link, openid_configuration=fake_platform.url, registration_token="tok")
    assert page.status_code == 200, page.text
    assert LtiRegistration.objects.filter(client_id="fake-client", issuer="https://canvas.instructure.com").exists()


def test_the_shared_canvas_issuer_claimed_by_another_lms_is_refused(live_server, north, fake_platform):
    fake_platform.configuration["issuer"] = "https://canvas.instructure.com"
    refused_with_nothing_saved(live_server, north, fake_platform, says="on another host")
    assert fake_platform.posted == []


def test_a_registration_endpoint_on_another_site_is_refused(live_server, north, fake_platform):
    fake_platform.configuration["registration_endpoint"] = "http://127.0.0.1:9/register"
    refused_with_nothing_saved(live_server, north, fake_platform, says="is not on the site")
    assert fake_platform.posted == []


def test_a_configuration_that_is_not_json_is_refused(live_server, north, fake_platform):
    fake_platform.raw_configuration = b"<html>Moodle login</html>"
    refused_with_nothing_saved(live_server, north, fake_platform, says="is not JSON")


def test_a_huge_configuration_is_refused(live_server, north, fake_platform):
    fake_platform.raw_configuration = b'{"issuer": "' + b"x" * (300 * 1024) + b'"}'
    refused_with_nothing_saved(live_server, north, fake_platform, says="larger than 256 KB")


def test_a_configuration_without_the_lti_platform_part_is_refused(live_server, north, fake_platform):
    del fake_platform.configuration["https://purl.imsglobal.org/spec/lti-platform-configuration"]
    refused_with_nothing_saved(live_server, north, fake_platform, says="LTI platform configuration")


@pytest.mark.parametrize("answer, says", [
    ((400, b'{"error": "invalid_client_metadata", "error_description": "redirect_uris bad"}'), "HTTP 400 (invalid_client_metadata: redirect_uris bad)"),
    ((500, b"<h1>Server Error</h1>"), "HTTP 500"),
    ((200, b"OK, registered!"), "is not JSON"),
    ((200, b'{"client_name": "no id here"}'), "no usable client_id"),
    ((201, b'{"client_id": "has space"}'), "no usable client_id"),
])
def test_a_platform_that_refuses_or_answers_badly_leaves_nothing_saved(live_server, north, fake_platform, answer, says):
    fake_platform.answer = answer
    refused_with_nothing_saved(live_server, north, fake_platform, says=says)
    assert len(fake_platform.posted) == 1
    posted = json.loads(fake_platform.posted[0])
    assert posted["initiate_login_uri"].startswith(f"{live_server.url}/lti/login/")


def test_a_client_id_already_registered_here_is_refused(live_server, north, fake_platform):
    lms.connect(live_server.url, north)  # some other registration exists
    LtiRegistration.objects.create(
        name="Existing", issuer=fake_platform.base, client_id="fake-client", auth_url=f"{fake_platform.base}/auth",
        token_url=f"{fake_platform.base}/token", keyset_url=f"{fake_platform.base}/jwks",
    )
    refused_with_nothing_saved(live_server, north, fake_platform, says="already registered here as “Existing”")


# --- The admin: links made by the integration team, audited without the token ---------------------------


@pytest.mark.django_db  # no live server: the staff groups of the migrated database are kept
def test_integration_staff_make_a_link_shown_once_and_audited_without_the_token(client_for, north):
    client = client_for(INTEGRATION)
    page = client.post("/admin/institutions/registrationinvitation/add/", {
        "institution": north.pk, "lms_family": LmsFamily.MOODLE, "activate_on_registration": "on", "lifetime_days": "3",
    })

    assert page.status_code == 200, page.content[:2000]
    text = page.content.decode()
    invitation = RegistrationInvitation.objects.get()
    link = next(word for word in text.replace('"', " ").replace("<", " ").split() if "/lti/register/" in word)
    token = link.rstrip("/").rsplit("/", 1)[1]
    assert invitation.token_sha256 == token_digest(token)
    assert invitation.activate_on_registration and invitation.lms_family == LmsFamily.MOODLE
    assert timedelta(days=2, hours=23) < invitation.expires_at - timezone.now() <= timedelta(days=3)
    entry = AuditEntry.objects.get(action="registrationinvitation.created")
    assert entry.actor == client.user and entry.institution == north
    assert token not in json.dumps(entry.changes) + entry.object_repr
    assert token not in client.get(f"/admin/institutions/registrationinvitation/{invitation.pk}/change/").content.decode()
    listing = client.get("/admin/institutions/registrationinvitation/").content.decode()
    assert "Usable" in listing and token not in listing


@pytest.mark.django_db
def test_read_only_staff_cannot_make_a_link(client_for, north):
    client = client_for(READ_ONLY)
    page = client.post("/admin/institutions/registrationinvitation/add/", {
        "institution": north.pk, "lms_family": LmsFamily.MOODLE, "lifetime_days": "3",
    })
    assert page.status_code == 403
    assert not RegistrationInvitation.objects.exists()


def test_a_platform_that_sends_no_deployment_id_gets_a_registration_whose_deployment_comes_with_its_first_launch(
    live_server, north, fake_platform
):
    fake_platform.answer = (200, json.dumps({"client_id": "no-deployment-yet"}).encode())
    _, link = new_link(live_server, north)
    page = open_link(link, openid_configuration=fake_platform.url, registration_token="tok")
    assert page.status_code == 200, page.text
    assert "deployment" in page.text and "first launch" in page.text
    registration = LtiRegistration.objects.get(client_id="no-deployment-yet")
    assert not registration.deployments.exists() and registration.profile.registered_via == RegisteredVia.DYNAMIC


@pytest.mark.django_db
def test_the_institution_page_offers_a_link_preselected_for_it_to_integration_only(client_for, north):
    start = f"/admin/institutions/registrationinvitation/add/?institution={north.pk}"
    integration = client_for(INTEGRATION)
    page = integration.get(f"/admin/institutions/institution/{north.pk}/change/").content.decode()
    assert start in page.replace("&amp;", "&")
    form = integration.get(start).content.decode()
    assert f'<option value="{north.pk}" selected>' in form
    assert start not in client_for(READ_ONLY).get(f"/admin/institutions/institution/{north.pk}/change/").content.decode()
