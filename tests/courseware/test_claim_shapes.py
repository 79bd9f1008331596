"""A signed launch whose claims have the wrong shape is refused with a 400 naming the claim, and writes
nothing; realistic shapes from real LMSes are accepted.

Each token is signed with the sandbox platform's own key after a real login through the tool, and
posted to the tool's launch endpoint over HTTP (as in test_launch_security.py): only the one claim
under test is wrong.
"""
from __future__ import annotations

import copy
import html
import time

import jwt
import pytest
from lti_tool.models import LtiContext, LtiDeployment, LtiResourceLink, LtiUser

from courseware.models import Launch
from institutions.models import Course, DeploymentOwnership
from tests import lms
from tests.courseware_factories import ActivityFactory

pytestmark = pytest.mark.django_db(transaction=True)

LTI = "https://purl.imsglobal.org/spec/lti/claim/"
AGS = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
NRPS = "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"
DL = "https://purl.imsglobal.org/spec/lti-dl/claim/deep_linking_settings"
PNS = LTI + "platformnotificationservice"
LEARNER = "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner"
INSTRUCTOR = "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"
DEEP_LINKING = {LTI + "message_type": "LtiDeepLinkingRequest", LTI + "roles": [INSTRUCTOR], LTI + "resource_link": None}


@pytest.fixture
def connected(live_server, two_institutions):
    return lms.connect(live_server.url, two_institutions[0])


def claims_for(connected, login, overrides=()):
    """A complete launch with the optional claims real LMSes send; `overrides` are (path, value), None deletes."""
    now = int(time.time())
    base = connected.base_url
    claims = {
        "iss": connected.registration.issuer,
        "aud": connected.registration.client_id,
        "sub": connected.students[0].sub,
        "iat": now,
        "exp": now + 300,
        "nonce": login["nonce"],
        "name": "Ada Learner", "given_name": "Ada", "family_name": "Learner", "email": "ada@north.example",
        LTI + "message_type": "LtiResourceLinkRequest",
        LTI + "version": "1.3.0",
        LTI + "deployment_id": connected.deployment.deployment_id,
        LTI + "target_link_uri": login["redirect_uri"],
        LTI + "roles": [LEARNER],
        LTI + "context": {"id": connected.course.context_id, "title": connected.course.title, "label": "NET-101",
                          "type": ["http://purl.imsglobal.org/vocab/lis/v2/course#CourseOffering"]},
        LTI + "resource_link": {"id": connected.seeded.resource_link.resource_link_id, "title": "OSI quiz"},
        LTI + "launch_presentation": {"return_url": f"{base}/sandbox-lms/return/", "document_target": "iframe"},
        LTI + "tool_platform": {"guid": "sandbox-guid", "name": "Sandbox LMS", "product_family_code": "canvas"},
        LTI + "lis": {"person_sourcedid": "SIS-1"},
        LTI + "custom": {"course_start_date": "2026-01-15 00:00:00 -0700"},
        AGS: {"scope": ["https://purl.imsglobal.org/spec/lti-ags/scope/score"], "lineitems": f"{base}/sandbox-lms/li/"},
        NRPS: {"context_memberships_url": f"{base}/sandbox-lms/memberships/", "service_versions": ["2.0"]},
        PNS: {"platform_notification_service_url": f"{base}/sandbox-lms/pns/", "notice_types_supported": ["LtiContextCopyNotice"]},
        DL: {"deep_link_return_url": f"{base}/sandbox-lms/dl-return/", "accept_types": ["ltiResourceLink"],
             "accept_presentation_document_targets": ["iframe"], "accept_multiple": True, "data": "opaque"},
    }
    for path, value in dict(overrides).items():
        path = (path,) if isinstance(path, str) else path
        target = claims
        for step in path[:-1]:
            target = target[step]
        if value is None:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = copy.deepcopy(value)
    return claims


def counts():
    return [model.objects.count() for model in (LtiUser, LtiContext, LtiResourceLink, Course, Launch, LtiDeployment)]


def launch(connected, overrides=()):
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    key = connected.seeded.platform.keys.filter(is_published=True).order_by("-id").first()
    token = jwt.encode(claims_for(connected, login, overrides), key.private_pem, algorithm="RS256", headers={"kid": key.kid})
    return http.post(login["redirect_uri"], data={"id_token": token, "state": login["state"]}, allow_redirects=False, timeout=10)


def nested(depth):
    value = "deep"
    for _ in range(depth):
        value = [value]
    return value


# (what is wrong, the claim overrides, what the refusal says)
WRONG_SHAPES = [
    ("sub too long", {"sub": "u" * 256}, "sub claim must be at most 255 characters"),
    ("sub with a control character", {"sub": "u-1\x1b[2J"}, "sub claim contains control characters"),
    ("sub with NUL", {"sub": "u-1\x00"}, "sub claim contains a NUL character"),
    ("roles not strings", {LTI + "roles": [LEARNER, 7]}, "roles claim must be a list of strings (got a number)"),
    ("too many roles", {LTI + "roles": [LEARNER] * 201}, "roles claim has 201 entries"),
    ("context id an object", {(LTI + "context", "id"): {"id": "c-1"}}, "context id claim must be a non-empty string (got an object)"),
    ("context id too long", {(LTI + "context", "id"): "c" * 256}, "context id claim must be at most 255 characters"),
    ("context title too long", {(LTI + "context", "title"): "T" * 501}, "context title claim must be at most 500 characters"),
    ("context title a number", {(LTI + "context", "title"): 101}, "context title claim must be a string (got a number)"),
    ("context type a string", {(LTI + "context", "type"): "CourseOffering"}, "context type claim must be a list of strings"),
    ("resource_link id a list", {(LTI + "resource_link", "id"): ["rl-1"]}, "resource_link id claim must be a non-empty string (got a list)"),
    ("resource_link title an object", {(LTI + "resource_link", "title"): {"en": "Quiz"}}, "resource_link title claim must be a string (got an object)"),
    ("launch_presentation a string", {LTI + "launch_presentation": "iframe"}, "launch_presentation claim must be an object (got a text"),
    ("launch_presentation width a string", {(LTI + "launch_presentation", "width"): "100%"}, "launch_presentation width claim must be a number"),
    ("custom a list", {LTI + "custom": ["activity_id=1"]}, "custom claim must be an object of strings (got a list)"),
    ("lis a string", {LTI + "lis": "SIS-1"}, "lis claim must be an object (got a text"),
    ("tool_platform without guid", {(LTI + "tool_platform", "guid"): None}, "tool_platform claim has no guid"),
    ("tool_platform a list", {LTI + "tool_platform": ["Sandbox"]}, "tool_platform claim must be an object with a string guid (got a list)"),
    ("tool_platform url too long", {(LTI + "tool_platform", "url"): "https://lms.example/" + "a" * 200}, "tool_platform url claim must be at most 200"),
    ("AGS endpoint a string", {AGS: "https://lms.example/li"}, "AGS endpoint (lti-ags/claim/endpoint) claim must be an object (got a text"),
    ("AGS scope a string", {(AGS, "scope"): "https://purl.imsglobal.org/spec/lti-ags/scope/score"}, "AGS endpoint (lti-ags/claim/endpoint) scope claim must be a list of strings"),
    ("AGS lineitem not http", {(AGS, "lineitem"): "javascript:alert(1)"}, "AGS endpoint (lti-ags/claim/endpoint) lineitem claim must be an http(s) URL"),
    ("AGS lineitems too long", {(AGS, "lineitems"): "https://lms.example/" + "a" * 200}, "lineitems claim must be at most 200 characters"),
    ("NRPS without its URL", {(NRPS, "context_memberships_url"): None}, "names and roles (lti-nrps/claim/namesroleservice) claim has no context_memberships_url"),
    ("NRPS URL a number", {(NRPS, "context_memberships_url"): 42}, "context_memberships_url claim must be a string (got a number)"),
    ("PNS notice types a string", {(PNS, "notice_types_supported"): "LtiContextCopyNotice"}, "notice_types_supported claim must be a list of strings"),
    ("deep_linking_settings a list", {DL: ["ltiResourceLink"], **DEEP_LINKING}, "deep-linking request has no deep_link_return_url"),
    ("deep_link_return_url not http", {(DL, "deep_link_return_url"): "javascript:alert(1)", **DEEP_LINKING}, "deep_linking_settings deep_link_return_url claim must be an http(s) URL"),
    ("accept_types a string", {(DL, "accept_types"): "ltiResourceLink", **DEEP_LINKING}, "deep_linking_settings accept_types claim must be a list of strings"),
    ("accept_multiple a string", {(DL, "accept_multiple"): "yes", **DEEP_LINKING}, "deep_linking_settings accept_multiple claim must be true or false"),
    ("accept_lineitem a number", {(DL, "accept_lineitem"): 1, **DEEP_LINKING}, "deep_linking_settings accept_lineitem claim must be true or false"),
    ("deep-linking data an object", {(DL, "data"): {"state": 1}, **DEEP_LINKING}, "deep_linking_settings data claim must be a string (got an object)"),
    ("deployment_id an object", {LTI + "deployment_id": {"id": "dep-1"}}, "deployment_id claim must be a non-empty string (got an object)"),
    ("deployment_id too long", {LTI + "deployment_id": "d" * 256}, "deployment_id claim must be at most 255 characters"),
    ("target_link_uri a list", {LTI + "target_link_uri": ["https://tool.example/"]}, "target_link_uri claim must be a string (got a list)"),
    ("nonce a list", {"nonce": ["n-1"]}, "nonce claim must be a string (got a list)"),
    ("name a list", {"name": ["Ada", "Learner"]}, "name claim must be a string (got a list)"),
    ("given_name too long", {"given_name": "A" * 501}, "given_name claim must be at most 500 characters"),
    ("email an object", {"email": {"primary": "ada@north.example"}}, "email claim must be a string (got an object)"),
    ("NaN in an extension claim", {(LTI + "lis", "score"): float("nan")}, "lis claim contains a number that is not finite"),
    ("NUL in a custom value", {(LTI + "custom", "note"): "a\x00b"}, "custom claim contains a NUL character"),
    ("unpaired surrogate in a title", {(LTI + "context", "title"): "Net\ud800"}, "context claim contains text that is not valid Unicode"),
    ("a claim named with an unpaired surrogate", {"x-\ud800": "v"}, "The launch's 'x-\\ud800' claim contains text that is not valid Unicode"),
    ("nesting too deep", {(LTI + "custom", "deep"): nested(20)}, "custom claim is nested too deeply"),
]


@pytest.mark.parametrize("overrides,reason", [case[1:] for case in WRONG_SHAPES], ids=[case[0] for case in WRONG_SHAPES])
def test_a_wrong_claim_shape_is_refused_naming_the_claim_and_writes_nothing(connected, overrides, reason):
    before = counts()
    response = launch(connected, overrides)
    assert response.status_code == 400, response.text[:500]
    assert reason in html.unescape(response.text), html.unescape(response.text)[:2000]
    assert "Traceback" not in response.text
    assert counts() == before


def test_realistic_canvas_shapes_are_accepted(connected):
    """Canvas: numeric-looking string ids, hashed context ids, numbers among custom values (ignored),
    long-but-legal titles, optional members sent as null, a long signed avatar URL (dropped, not refused)."""
    activity = ActivityFactory(slug="canvas-quiz", title="Canvas quiz")
    response = launch(connected, {
        (LTI + "context", "title"): "Network+ " + "N" * 490,
        (LTI + "context", "label"): None,
        (LTI + "resource_link", "title"): "Quiz " + "Q" * 495,
        (LTI + "resource_link", "description"): None,
        LTI + "custom": {
            "activity_id": str(activity.pk), "canvas_course_id": 12345, "canvas_user_prefers_high_contrast": False,
            "course_start_date": "0001-01-01T00:00:00+14:00",  # not a storable date: ignored
        },
        "picture": "https://instructure-uploads.s3.amazonaws.com/account_1/attachments/1/avatar.png?X-Amz-Signature=" + "f" * 200,
        "email": "Ada Learner",  # not an address: dropped
        (LTI + "launch_presentation", "return_url"): "javascript:alert(1)",  # cannot be redirected to: dropped
        "locale": "en-GB",
    })
    assert response.status_code == 302 and f"/courseware/play/" in response.headers["Location"], response.text[:500]
    launch_row = Launch.objects.get()
    assert launch_row.return_url == ""
    assert launch_row.course.title.startswith("Network+ ") and len(launch_row.course.title) == 499
    assert launch_row.course.starts_at is None
    user = launch_row.lti_user
    assert user.picture_url == "" and user.email == ""
    assert LtiResourceLink.objects.get().title.startswith("Quiz ")


def test_moodle_style_integer_ids_are_accepted_as_their_strings(connected):
    """Platforms that serialise database ids as JSON numbers: the stored id is the same decimal string."""
    numeric = LtiDeployment.objects.create(registration=connected.registration, deployment_id="42", is_active=True)
    DeploymentOwnership.objects.create(deployment=numeric, institution=connected.institution)
    activity = ActivityFactory(slug="moodle-quiz", title="Moodle quiz")
    response = launch(connected, {
        LTI + "deployment_id": 42, (LTI + "context", "id"): 7, (LTI + "resource_link", "id"): 9,
        (LTI + "tool_platform", "guid"): 1234, LTI + "custom": {"activity_id": str(activity.pk)},
    })
    assert response.status_code == 302 and "/courseware/play/" in response.headers["Location"], response.text[:500]
    launch_row = Launch.objects.get()
    assert launch_row.deployment.deployment_id == "42"
    assert launch_row.course.context.id_on_platform == "7"
    assert LtiResourceLink.objects.get().id_on_platform == "9"


def test_sub_that_is_not_a_string_is_refused(connected):
    """PyJWT checks `sub` before our shapes do ("Subject must be a string"): still a 4xx and nothing written."""
    before = counts()
    response = launch(connected, {"sub": ["u-1"]})
    assert response.status_code == 401 and "Subject must be a string" in response.text
    assert counts() == before


def test_a_boolean_is_not_an_id(connected):
    before = counts()
    response = launch(connected, {(LTI + "context", "id"): True})
    assert response.status_code == 400 and "context id claim must be a non-empty string (got true)" in response.text
    assert counts() == before
