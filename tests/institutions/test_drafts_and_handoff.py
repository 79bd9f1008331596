"""Registrations in the order LMSes work (drafts first, client ID later) and the hand-off pages per LMS.

As the integration team uses the admin: a draft is saved without a client ID (two Canvas drafts at once,
though every hosted Canvas shares one issuer), its tool URLs are shown at once, it matches no launch;
typing the client ID and deployment ID makes it live, and a launch from the sandbox LMS over real HTTP
then reaches a graded activity. The hand-off page says where each value goes in each LMS, and the
Canvas developer key JSON is served at a public URL Canvas can fetch.
"""
from __future__ import annotations

import html
import json
import re
import uuid
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import requests
from django.apps import apps as django_apps
from django.test import Client
from django.urls import reverse
from lti_tool.models import Key, LtiDeployment, LtiRegistration

from institutions import tool_configuration
from institutions.models import AuditEntry, DeploymentOwnership
from institutions.roles import INTEGRATION, READ_ONLY, sync_staff_roles
from sandbox_lms import api, developer_keys
from sandbox_lms.models import Role
from tests import lms
from tests.courseware.test_launch_flow import catalog, link_for, take_quiz  # noqa: F401 - catalog is a fixture
from tests.courseware.test_launch_security import rows
from tests.factories import RegistrationFactory
from tests.institutions.test_admin import registration_post_data

pytestmark = pytest.mark.django_db

CANVAS = {
    "issuer": "https://canvas.instructure.com",
    "auth_url": "https://sso.canvaslms.com/api/lti/authorize_redirect",
    "token_url": "https://sso.canvaslms.com/login/oauth2/token",
    "keyset_url": "https://sso.canvaslms.com/api/lti/security/jwks",
    "profile-0-lms_family": "canvas",
}


def add_url() -> str:
    return reverse("admin:lti_tool_ltiregistration_add")


def handoff_url(registration: LtiRegistration) -> str:
    return reverse("admin:lti_tool_ltiregistration_tool_configuration", args=[registration.pk])


def change_url(registration: LtiRegistration) -> str:
    return reverse("admin:lti_tool_ltiregistration_change", args=[registration.pk])


def change_post(registration: LtiRegistration, *, client_id: str = "", deployment_ids: tuple[str, ...] = (), **overrides) -> dict:
    """The change form as the browser posts it: the registration's own values, a client ID, new deployment rows."""
    data = registration_post_data(
        name=registration.name, issuer=registration.issuer, client_id=client_id, auth_url=registration.auth_url,
        token_url=registration.token_url, keyset_url=registration.keyset_url, is_active="",
        **{"profile-INITIAL_FORMS": "1", "profile-0-id": str(registration.profile.pk),
           "profile-0-registration": str(registration.pk), "profile-0-lms_family": registration.profile.lms_family,
           "deployments-TOTAL_FORMS": str(len(deployment_ids))},
    )
    for i, deployment_id in enumerate(deployment_ids):
        data.update({f"deployments-{i}-deployment_id": deployment_id, f"deployments-{i}-is_active": "on",
                     f"deployments-{i}-registration": str(registration.pk), f"deployments-{i}-id": ""})
    data.update(overrides)
    return data


def shown_value(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', page)
    assert match, f"no #{element_id} on the page"
    return html.unescape(match.group(1))


# --- Drafts -----------------------------------------------------------------------------------


def test_two_canvas_drafts_are_saved_without_a_client_id_and_their_urls_shown_at_once(client_for, two_institutions):
    north, south = two_institutions
    client = client_for(INTEGRATION)
    pages = []
    for institution in (north, south):
        response = client.post(
            f"{add_url()}?institution={institution.pk}",
            registration_post_data(name="", client_id="", **CANVAS), follow=True,
        )
        assert response.redirect_chain, response.context["adminform"].form.errors
        pages.append(response.content.decode())

    drafts = list(LtiRegistration.objects.order_by("pk"))
    assert [d.name for d in drafts] == ["North College — Canvas", "South University — Canvas"]
    assert all(tool_configuration.is_draft(d) and not d.is_active for d in drafts)
    for draft, page in zip(drafts, pages):
        # Straight to the hand-off page, with the draft's own login URL and no placeholder shown.
        assert f"http://testserver/lti/login/{draft.uuid}/" == shown_value(page, "cfg-login")
        assert shown_value(page, "cfg-client-id") == "— not issued yet —"
        assert "Draft" in page and draft.client_id not in page
        assert f"http://testserver/lti/registrations/{draft.uuid}/canvas.json" in page
    created = AuditEntry.objects.filter(action="ltiregistration.created").order_by("pk")
    assert [entry.institution for entry in created] == [north, south]
    assert all(entry.changes["client_id"] == [None, "— not issued yet —"] for entry in created)
    assert not any("draft-" in json.dumps(entry.changes) for entry in AuditEntry.objects.all())


def test_the_list_shows_drafts_as_drafts_and_filters_them(client_for):
    draft = RegistrationFactory(name="West Canvas (draft)", client_id=tool_configuration.new_draft_client_id(), is_active=False)
    RegistrationFactory(name="East Moodle", client_id="live-77")
    client = client_for(READ_ONLY)
    page = client.get(reverse("admin:lti_tool_ltiregistration_changelist")).content.decode()
    assert "— not issued yet —" in page and "Draft" in page and "Live" in page
    assert draft.client_id not in page
    drafts_only = client.get(reverse("admin:lti_tool_ltiregistration_changelist") + "?state=draft").content.decode()
    assert "West Canvas (draft)" in drafts_only and "East Moodle" not in drafts_only


def test_a_drafts_change_form_shows_a_blank_client_id_and_says_it_is_a_draft(client_for):
    draft = RegistrationFactory(name="West Canvas", client_id=tool_configuration.new_draft_client_id(), is_active=False)
    response = client_for(INTEGRATION).get(change_url(draft))
    page = response.content.decode()
    assert response.context["adminform"].form.initial["client_id"] == ""
    assert draft.client_id not in page and "Draft: the LMS has not issued a client ID yet." in page


def test_saving_a_draft_again_keeps_it_a_draft_with_its_urls(client_for):
    draft = RegistrationFactory(name="West Canvas", client_id=tool_configuration.new_draft_client_id(), is_active=False)
    placeholder, login_uuid = draft.client_id, draft.uuid
    response = client_for(INTEGRATION).post(change_url(draft), change_post(draft, name="West Canvas (renamed)", is_active="on"))
    assert response.status_code == 302
    draft.refresh_from_db()
    assert (draft.client_id, draft.uuid, draft.is_active) == (placeholder, login_uuid, False)


def test_a_placeholder_typed_as_a_client_id_is_refused(client_for):
    response = client_for(INTEGRATION).post(add_url(), registration_post_data(client_id="draft-0123abcd"))
    assert response.status_code == 200
    assert "not a client ID an LMS issued" in str(response.context["adminform"].form.errors["client_id"])
    assert not LtiRegistration.objects.exists() and not AuditEntry.objects.exists()


def test_a_live_registration_cannot_lose_its_client_id(client_for):
    live = RegistrationFactory(name="East Moodle", client_id="live-77")
    response = client_for(INTEGRATION).post(change_url(live), change_post(live, client_id=""))
    assert response.status_code == 200
    assert "cannot be removed" in str(response.context["adminform"].form.errors["client_id"])
    live.refresh_from_db()
    assert live.client_id == "live-77" and not AuditEntry.objects.exists()


def test_a_draft_given_its_client_id_and_deployment_goes_live_and_the_deployment_is_the_institutions(client_for, two_institutions):
    north, _ = two_institutions
    client = client_for(INTEGRATION)
    client.post(f"{add_url()}?institution={north.pk}", registration_post_data(name="", client_id="", **CANVAS))
    draft = LtiRegistration.objects.get()
    form = client.get(change_url(draft)).context["adminform"].form
    assert form.fields["deployments_institution"].initial == north.pk  # remembered from the add page
    response = client.post(
        change_url(draft),
        change_post(draft, client_id=" 10000000000042 ", deployment_ids=("1:abc",), deployments_institution=str(north.pk)),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    draft.refresh_from_db()
    assert (draft.client_id, draft.is_active, tool_configuration.is_draft(draft)) == ("10000000000042", True, False)
    deployment = LtiDeployment.objects.get(registration=draft)
    assert deployment.is_active and deployment.ownership.institution == north
    changed = AuditEntry.objects.get(action="ltiregistration.changed")
    assert changed.changes["client_id"] == ["— not issued yet —", "10000000000042"]
    assert changed.changes["is_active"] == [False, True]
    assert AuditEntry.objects.get(action="deployment.assigned").institution == north


@pytest.mark.parametrize("preset,words", [
    ("moodle", ["Save this registration as a draft", "View configuration details"]),
    ("canvas", ["Canvas JSON URL", "turns it ON", "Deployment Id"]),
    ("blackboard", ["application ID", "known first"]),
    ("d2l", ["Register Tool", "New Deployment"]),
    ("schoology", ["Client ID"]),
])
def test_each_preset_says_the_order_its_lms_works_in(client_for, preset, words):
    page = client_for(INTEGRATION).get(f"{add_url()}?preset={preset}").content.decode()
    order = html.unescape(page[page.index('id="onboarding-order"'):])
    for word in words:
        assert word in order, word
    assert "Leave the client ID blank and save: that is a draft" in page


# --- Drafts and the login door ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_the_login_for_a_draft_is_refused_with_its_reason_and_nothing_written(live_server, method):
    draft = RegistrationFactory(
        name="West Canvas", issuer="https://canvas.instructure.com",
        client_id=tool_configuration.new_draft_client_id(), is_active=False,
    )
    params = {"iss": draft.issuer, "login_hint": "u-1", "target_link_uri": f"{live_server.url}/lti/launch/",
              "client_id": draft.client_id}
    url = f"{live_server.url}/lti/login/{draft.uuid}/"
    before = rows()
    http = lms.browser()
    response = (http.get(url, params=params, allow_redirects=False, timeout=10) if method == "GET"
                else http.post(url, data=params, allow_redirects=False, timeout=10))
    assert response.status_code == 409
    assert "This registration is not finished: its client ID has not been entered yet" in html.unescape(response.text)
    assert not [name for name in response.cookies.keys() if name.startswith("lti1p3-") or name == "sessionid"]
    assert rows() == before


@pytest.mark.django_db(transaction=True)
def test_a_moodle_draft_becomes_live_and_a_student_launch_from_the_lms_is_graded(live_server, two_institutions, client_for, catalog):  # noqa: F811
    """Moodle's order: our URLs first (a draft), then Moodle issues the client ID and deployment ID."""
    north, _ = two_institutions
    _, quiz, _ = catalog
    Key.objects.filter(is_active=True).exists() or Key.objects.generate()
    sync_staff_roles(django_apps)  # a transactional test starts with empty tables: the role groups again
    platform = api.create_platform(base_url=f"{live_server.url}/sandbox-lms")
    client = client_for(INTEGRATION)
    tool_host = urlsplit(live_server.url).netloc  # the hand-off page names the tool as the LMS reaches it

    # 1. The integration team saves a draft from the platform's values: no client ID yet.
    response = client.post(f"{add_url()}?institution={north.pk}", registration_post_data(
        name="", client_id="", issuer=platform.issuer, auth_url=platform.url("auth/"),
        token_url=platform.url("token/"), keyset_url=platform.url("jwks/"),
    ), HTTP_HOST=tool_host)
    assert response.status_code == 302, response.context["adminform"].form.errors
    draft = LtiRegistration.objects.get()
    handoff = client.get(response["Location"], HTTP_HOST=tool_host)
    page = handoff.content.decode()
    login_url = shown_value(page, "cfg-login")
    assert login_url == f"{live_server.url}/lti/login/{draft.uuid}/"

    # 2. The Moodle admin enters those URLs; Moodle issues a client ID and a deployment ID (the tool type's id).
    seeded = api.seed_platform(
        base_url=platform.base_url, client_id="kR3nq2V7pXz", deployment_id="4", profile="moodle",
        login_url=login_url, launch_url=shown_value(page, "cfg-launch"),
        deep_linking_url=shown_value(page, "cfg-deep-linking"), jwks_url=shown_value(page, "cfg-jwks"),
        custom=tool_configuration.custom_parameters("moodle"),
    )
    before = rows()
    refused = lms.launch(lms.browser(), user=seeded.students[0], resource_link=seeded.resource_link)
    assert refused.status_code == 409 and "not finished" in html.unescape(refused.text)
    assert rows() == before

    # 3. The client ID and deployment ID typed in: the registration is live, the deployment North's.
    response = client.post(change_url(draft), change_post(
        draft, client_id="kR3nq2V7pXz", deployment_ids=("4",), deployments_institution=str(north.pk),
    ))
    assert response.status_code == 302, response.context["adminform"].form.errors
    draft.refresh_from_db()
    assert draft.is_active and not tool_configuration.is_draft(draft)
    assert DeploymentOwnership.objects.get(deployment__deployment_id="4").institution == north

    # 4. The instructor places the quiz, a student takes it, and the grade reaches Moodle's gradebook.
    connected = lms.Connected(seeded, draft, LtiDeployment.objects.get(deployment_id="4"), north, live_server.url)
    placed = lms.deep_link(lms.browser(), connected, {quiz.pk: {"graded": True, "points": 10}})
    assert placed.status_code == 200, placed.text[:500]
    http = lms.browser()
    launched = lms.launch(http, user=seeded.students[0], resource_link=link_for(connected, quiz))
    assert take_quiz(http, launched, [1, 2, 0, 3]).status_code == 200
    line_item = seeded.course.line_items.get(label="Quiz: OSI layers")
    assert api.grades(line_item=line_item)[seeded.students[0].sub].result == pytest.approx(10)


@pytest.mark.django_db(transaction=True)
def test_a_canvas_draft_made_from_its_json_url_becomes_live_and_a_student_launch_is_graded(live_server, two_institutions, client_for, catalog):  # noqa: F811
    """Canvas's order: a draft, a developer key made from its JSON URL, the key's number, the installation's id."""
    north, _ = two_institutions
    _, quiz, _ = catalog
    Key.objects.filter(is_active=True).exists() or Key.objects.generate()
    sync_staff_roles(django_apps)
    platform = api.create_platform(base_url=f"{live_server.url}/sandbox-lms")
    client = client_for(INTEGRATION)
    tool_host = urlsplit(live_server.url).netloc
    response = client.post(f"{add_url()}?institution={north.pk}", registration_post_data(
        name="", client_id="", issuer=platform.issuer, auth_url=platform.url("auth/"),
        token_url=platform.url("token/"), keyset_url=platform.url("jwks/"), **{"profile-0-lms_family": "canvas"},
    ), HTTP_HOST=tool_host)
    assert response.status_code == 302, response.context["adminform"].form.errors
    draft = LtiRegistration.objects.get()
    json_url = shown_value(client.get(response["Location"], HTTP_HOST=tool_host).content.decode(), "cfg-canvas-json-url")

    # The Canvas admin: LTI Key → Enter URL (fetched over HTTP, no sign-in), then + App → By Client ID.
    developer_key = developer_keys.create_developer_key(platform=platform, data=developer_keys.fetch_tool_json(json_url))
    assert developer_key.login_url == f"{live_server.url}/lti/login/{draft.uuid}/"
    assert "https://purl.imsglobal.org/spec/lti-ags/scope/score" in developer_key.scopes
    installation = developer_keys.install(registration=developer_key)
    course = developer_keys.course_for_tool(deployment=installation, title="Networking Fundamentals")

    response = client.post(change_url(draft), change_post(
        draft, client_id=developer_key.client_id, deployment_ids=(installation.deployment_id,),
        deployments_institution=str(north.pk),
    ))
    assert response.status_code == 302, response.context["adminform"].form.errors

    people = {e.role: e.user for e in course.enrolments.select_related("user")}
    seeded = SimpleNamespace(instructor=people[Role.INSTRUCTOR], students=[people[Role.LEARNER]], course=course)
    connected = lms.Connected(seeded, draft, LtiDeployment.objects.get(registration=draft), north, live_server.url)
    placed = lms.deep_link(lms.browser(), connected, {quiz.pk: {"graded": True, "points": 20}})
    assert placed.status_code == 200, placed.text[:500]
    http = lms.browser()
    launched = lms.launch(http, user=people[Role.LEARNER], resource_link=link_for(connected, quiz))
    assert take_quiz(http, launched, [1, 2, 0, 3]).status_code == 200
    line_item = course.line_items.get(label="Quiz: OSI layers")
    assert api.grades(line_item=line_item)[people[Role.LEARNER].sub].result == pytest.approx(20)


# --- Hand-off pages ---------------------------------------------------------------------------


MOODLE_LABELS = [
    "Tool URL", "LTI 1.3", "Public key type", "Keyset URL", "Initiate login URL", "Redirection URI(s)",
    "Supports Deep Linking", "Content Selection URL", "IMS LTI Assignment and Grade Services",
    "Use this service for grade sync and column management", "IMS LTI Names and Role Provisioning",
    "Use this service to retrieve members' information", "Share launcher's name with tool",
    "Share launcher's email with tool", "Accept grades from the tool", "Custom parameters",
]
LABELS = {
    "moodle": MOODLE_LABELS,
    "canvas": ["Enter URL", "Paste JSON", "Redirect URIs", "Course Navigation", "ON", "By Client ID", "Deployment Id"],
    "blackboard": ["Login Initiation URL", "Tool Redirect URL(s)", "Tool JWKS URL", "Allow grade service access",
                   "Application ID"],
    "d2l": ["OpenID Connect Login URL", "Target Link URI", "Keyset URL", "Assignment and Grade Services",
            "Brightspace OAuth2 Audience", "New Deployment"],
    "schoology": ["Add Materials", "Client ID", "Deployment ID"],
    "sakai": ["Allow External Tool to return grades", "Allow External Tool to create grade columns"],
}


def section(page: str, family: str) -> str:
    start = page.index(f'id="handoff-{family}"')
    end = page.find("</section>", start)
    return html.unescape(page[start:end])


@pytest.mark.parametrize("family", list(LABELS))
def test_the_handoff_page_says_where_each_value_goes_in_each_lms(client_for, family):
    registration = RegistrationFactory(name="North LMS", client_id="c-1")
    registration.profile.lms_family = family
    registration.profile.save()
    page = client_for(READ_ONLY).get(handoff_url(registration)).content.decode()
    tabs = re.findall(r'role="tab" id="tab-(\w+)"', page)
    assert tabs[0] == family and sorted(tabs) == sorted(LABELS)  # its own LMS first, every LMS offered
    text = section(page, family)
    for label in LABELS[family]:
        assert label in text, label
    assert f"http://testserver/lti/login/{registration.uuid}/" in text


def test_every_value_has_a_copy_button_and_no_script_comes_from_elsewhere(client_for):
    registration = RegistrationFactory(name="North Moodle", client_id="c-1")
    page = client_for(READ_ONLY).get(handoff_url(registration)).content.decode()
    copy_targets = re.findall(r'data-copy="([\w-]+)"', page)
    for target in ["cfg-login", "cfg-launch", "cfg-redirect", "cfg-deep-linking", "cfg-jwks", "cfg-canvas-json-url",
                   "cfg-custom", "canvas-json"]:
        assert target in copy_targets, target
    assert all(f'id="{target}"' in page for target in copy_targets)
    assert not re.search(r'<script[^>]+src="(https?:)?//', page)  # no CDN


def test_the_handoff_page_warns_when_the_tool_is_reached_over_http_or_loopback(client_for, settings):
    registration = RegistrationFactory(name="North Moodle", client_id="c-1")
    client = client_for(READ_ONLY)
    loopback = client.get(handoff_url(registration), HTTP_HOST="127.0.0.1:8000").content.decode()
    assert "LMSes on other machines cannot reach http://127.0.0.1:8000/" in html.unescape(loopback)
    plain = client.get(handoff_url(registration)).content.decode()
    assert 'id="base-url-warning"' in plain and "plain http" in plain
    settings.ALLOWED_HOSTS = ["tool.example.com"]
    public = client.get(handoff_url(registration), HTTP_HOST="tool.example.com", secure=True).content.decode()
    assert 'id="base-url-warning"' not in public


# --- The Canvas JSON URL ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_canvas_json_url_is_public_and_is_what_canvas_needs(live_server):
    draft = RegistrationFactory(name="West Canvas", client_id=tool_configuration.new_draft_client_id(), is_active=False)
    url = f"{live_server.url}/lti/registrations/{draft.uuid}/canvas.json"
    response = requests.get(url, timeout=10)  # no session: Canvas fetches it itself
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    key = response.json()
    assert key["oidc_initiation_url"] == f"{live_server.url}/lti/login/{draft.uuid}/"
    assert key["public_jwk_url"] == f"{live_server.url}/lti/jwks/"
    assert key["scopes"] == tool_configuration.TOOL_SCOPES
    placements = {p["placement"]: p for p in key["extensions"][0]["settings"]["placements"]}
    navigation = placements["course_navigation"]
    assert navigation["custom_fields"] == {"tool_page": "instructor_tools"}
    assert navigation["visibility"] == "admins" and navigation["message_type"] == "LtiResourceLinkRequest"
    assert placements["assignment_selection"]["message_type"] == "LtiDeepLinkingRequest"
    assert draft.client_id not in response.text and "Content-Disposition" not in response.headers


def test_the_canvas_json_downloads_as_a_file_and_holds_no_secret(client_for):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    registration = RegistrationFactory(name="State Canvas", client_id="10000000000042", private_key=private)
    page = client_for(READ_ONLY).get(handoff_url(registration)).content.decode()
    download = html.unescape(re.search(r'id="canvas-json-download" href="([^"]+)"', page).group(1))
    assert download == f"http://testserver/lti/registrations/{registration.uuid}/canvas.json?download=1"
    response = Client().get(download)
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="canvas-state-canvas.json"'
    body = response.content.decode()
    assert json.loads(body)["oidc_initiation_url"].endswith(f"/lti/login/{registration.uuid}/")
    assert "PRIVATE KEY" not in body and "PRIVATE KEY" not in page


def test_the_canvas_json_url_is_get_only_and_404_for_an_unknown_registration():
    registration = RegistrationFactory(name="State Canvas", client_id="c-1")
    client = Client()
    assert client.get(f"/lti/registrations/{uuid.uuid4()}/canvas.json").status_code == 404
    assert client.get("/lti/registrations/not-a-uuid/canvas.json").status_code == 404
    assert client.post(f"/lti/registrations/{registration.uuid}/canvas.json").status_code == 405
