"""The sandbox LMS's side of LTI Dynamic Registration: its openid configuration per profile, its registration
endpoint (token, validation, Moodle-like pending tools, Canvas-like enabled ones), and its "Add a tool by link" page."""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt as pyjwt

import pytest

from sandbox_lms import api, dynamic_registration
from sandbox_lms.models import SandboxRegistration
from sandbox_lms.protocol import Refusal

pytestmark = pytest.mark.django_db

TOOL = "https://tool.example.edu"
TOOL_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-tool-configuration"
NOTICE_HANDLERS = "https://purl.imsglobal.org/spec/lti/scope/noticehandlers"
SERVICE_SCOPES = [
    "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem",
    "https://purl.imsglobal.org/spec/lti-ags/scope/score",
    "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly",
]


@pytest.fixture(autouse=True)
def _fresh():
    api.forget_caches()
    yield
    api.forget_caches()


@pytest.fixture
def platform():
    return api.create_platform(base_url="http://testserver/sandbox-lms")


def tool_configuration(**overrides):
    body = {
        "application_type": "web",
        "response_types": ["id_token"],
        "grant_types": ["implicit", "client_credentials"],
        "initiate_login_uri": f"{TOOL}/lti/login/abc/",
        "redirect_uris": [f"{TOOL}/lti/launch/"],
        "client_name": "Courseware",
        "jwks_uri": f"{TOOL}/lti/jwks/",
        "token_endpoint_auth_method": "private_key_jwt",
        "scope": " ".join([*SERVICE_SCOPES, NOTICE_HANDLERS, "https://example.com/not-offered"]),
        TOOL_CONFIGURATION: {
            "domain": "tool.example.edu",
            "target_link_uri": f"{TOOL}/lti/launch/",
            "custom_parameters": {"context_id_history": "$Context.id.history"},
            "claims": ["iss", "sub"],
            "messages": [
                {"type": "LtiResourceLinkRequest"},
                {"type": "LtiDeepLinkingRequest", "target_link_uri": f"{TOOL}/lti/deep/", "placements": ["ContentArea"]},
            ],
        },
    }
    body.update(overrides)
    return body


def post(client, platform, profile, body, *, token=None):
    token = token if token is not None else dynamic_registration.issue_registration_token(platform, profile)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/sandbox-lms/register/", data=data, content_type="application/json", **headers)


@pytest.mark.parametrize("profile, family, offers_pns", [("moodle", "moodle", False), ("canvas", "canvas", True), ("generic", "sandbox", False)])
def test_openid_configuration_names_the_platform_and_its_product(client, platform, profile, family, offers_pns):
    url = dynamic_registration.openid_configuration_url(platform, profile)
    answer = client.get(url.replace("http://testserver", ""))
    assert answer.status_code == 200
    configuration = answer.json()
    assert configuration["issuer"] == platform.issuer
    assert url.startswith(configuration["issuer"])  # a tool checks the issuer against the URL's host
    assert configuration["registration_endpoint"] == platform.url("register/")
    assert configuration["https://purl.imsglobal.org/spec/lti-platform-configuration"]["product_family_code"] == family
    assert (NOTICE_HANDLERS in configuration["scopes_supported"]) is offers_pns


def test_moodle_profile_registers_the_tool_pending_with_the_tool_type_as_deployment(client, platform):
    answer = post(client, platform, "moodle", tool_configuration())

    assert answer.status_code == 200, answer.content
    body = answer.json()
    registration = SandboxRegistration.objects.get(client_id=body["client_id"])
    assert body[TOOL_CONFIGURATION]["deployment_id"] == str(registration.pk)
    assert not registration.is_enabled and registration.registered_dynamically
    assert registration.login_url == f"{TOOL}/lti/login/abc/" and registration.jwks_url == f"{TOOL}/lti/jwks/"
    assert registration.deep_linking_url == f"{TOOL}/lti/deep/" and registration.launch_url == f"{TOOL}/lti/launch/"
    assert registration.custom == {"context_id_history": "$Context.id.history"}
    assert registration.scopes == SERVICE_SCOPES  # the notice handlers scope is not Moodle's, the unknown one nobody's
    assert registration.tool_configuration["client_name"] == "Courseware"

    course = api.create_course(deployment=registration.deployments.get(), title="C")
    teacher = api.create_user(platform=platform, name="T T")
    api.enrol(course=course, user=teacher, role=api.Role.INSTRUCTOR)
    with pytest.raises(Refusal, match="pending"):
        api.start_deep_linking(user=teacher, course=course)
    # Nor does a pending tool get a service token (no grade can be posted before the admin enables it).
    refused = client.post("/sandbox-lms/token/", content_type="application/x-www-form-urlencoded", data=urlencode({
        "grant_type": "client_credentials",
        "client_assertion": pyjwt.encode({"iss": registration.client_id, "sub": registration.client_id}, "k" * 32, algorithm="HS256"),
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "scope": " ".join(SERVICE_SCOPES),
    }))
    assert refused.status_code == 401 and "pending" in refused.json()["error_description"]
    assert client.post(f"/sandbox-lms/tools/{registration.pk}/enable/").status_code == 302
    course.refresh_from_db()
    assert api.start_deep_linking(user=teacher, course=course).params["client_id"] == registration.client_id


def test_canvas_profile_registers_enabled_and_grants_the_notice_handlers_scope(client, platform):
    answer = post(client, platform, "canvas", tool_configuration())
    assert answer.status_code == 200, answer.content
    registration = SandboxRegistration.objects.get(client_id=answer.json()["client_id"])
    assert registration.is_enabled and registration.profile == "canvas"
    assert NOTICE_HANDLERS in registration.scopes and NOTICE_HANDLERS in answer.json()["scope"].split()
    assert registration.client_id.isdigit()


@pytest.mark.parametrize("token, says", [
    ("", "required"),
    ("forged.token", "not one this platform issued"),
])
def test_a_missing_or_forged_token_is_401(client, platform, token, says):
    answer = post(client, platform, "moodle", tool_configuration(), token=token)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_token" and says in answer.json()["error_description"]
    assert not SandboxRegistration.objects.exists()


def test_a_token_registers_once(client, platform):
    token = dynamic_registration.issue_registration_token(platform, "moodle")
    assert post(client, platform, "moodle", tool_configuration(), token=token).status_code == 200
    again = post(client, platform, "moodle", tool_configuration(), token=token)
    assert again.status_code == 401 and "already used" in again.json()["error_description"]
    assert SandboxRegistration.objects.count() == 1


@pytest.mark.parametrize("body, says", [
    (b"not json", "JSON"),
    ([1, 2], "JSON object"),
    (tool_configuration(initiate_login_uri="http://evil.example.com/login"), "initiate_login_uri must be https"),
    (tool_configuration(redirect_uris=[]), "redirect_uris"),
    (tool_configuration(grant_types=["implicit"]), "client_credentials"),
    (tool_configuration(**{TOOL_CONFIGURATION: None}), TOOL_CONFIGURATION),
    (tool_configuration(**{TOOL_CONFIGURATION: {"domain": "x", "target_link_uri": f"{TOOL}/", "messages": [{"type": "Nope"}]}}), "messages"),
])
def test_a_bad_client_configuration_is_400_with_a_reason(client, platform, body, says):
    answer = post(client, platform, "canvas", body)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_client_metadata" and says in answer.json()["error_description"]
    assert not SandboxRegistration.objects.exists()


def test_add_a_tool_by_link_opens_the_tool_with_the_configuration_and_a_token(client, platform):
    home = client.get("/sandbox-lms/")
    assert "Add a tool by link" in home.content.decode()

    page = client.post("/sandbox-lms/tools/add/", {"tool_link": f"{TOOL}/lti/register/abc/", "profile": "moodle"})

    text = page.content.decode()
    assert page.status_code == 200 and 'id="tool-frame"' in text and "org.imsglobal.lti.close" in text
    frame = next(part for part in text.split('"') if part.startswith(f"{TOOL}/lti/register/abc/?"))
    query = parse_qs(urlsplit(frame.replace("&amp;", "&")).query)
    assert query["openid_configuration"][0] == dynamic_registration.openid_configuration_url(platform, "moodle")
    assert dynamic_registration.read_registration_token(f"Bearer {query['registration_token'][0]}").profile == "moodle"


def test_pending_registrations_are_listed_with_an_enable_button(client, platform):
    post(client, platform, "moodle", tool_configuration())
    text = client.get("/sandbox-lms/tools/add/").content.decode()
    assert "Pending" in text and ">Enable<" in text
