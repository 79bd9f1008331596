"""Every check of the Security Framework §5.1.3 refuses a bad id_token with a clear 4xx, and writes nothing.

Tokens are crafted here with the sandbox platform's own key (or a forger's), after a real login
initiation through the tool, and posted to the tool's launch endpoint over HTTP. "Nothing written"
means no row in any table a launch writes (`rows()`), no session row and no session cookie.
"""
from __future__ import annotations

import base64
import html
import json
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.sessions.models import Session
from lti_tool.models import LtiContext, LtiDeployment, LtiPlatformInstance, LtiRegistration, LtiResourceLink, LtiUser

from courseware.models import Attempt, Launch
from institutions.models import Course
from sandbox_lms import api
from tests import lms

pytestmark = pytest.mark.django_db(transaction=True)
LTI = "https://purl.imsglobal.org/spec/lti/claim/"


@pytest.fixture
def connected(live_server, two_institutions):
    return lms.connect(live_server.url, two_institutions[0])


def platform_key(connected):
    key = connected.seeded.platform.keys.filter(is_published=True).order_by("-id").first()
    return key.private_pem, key.kid


def claims_for(connected, login, **overrides):
    now = int(time.time())
    student = connected.students[0]
    claims = {
        "iss": connected.registration.issuer,
        "aud": connected.registration.client_id,
        "sub": student.sub,
        "iat": now,
        "exp": now + 300,
        "nonce": login["nonce"],
        LTI + "message_type": "LtiResourceLinkRequest",
        LTI + "version": "1.3.0",
        LTI + "deployment_id": connected.deployment.deployment_id,
        LTI + "target_link_uri": login["redirect_uri"],
        LTI + "roles": ["http://purl.imsglobal.org/vocab/lis/v2/membership#Learner"],
        LTI + "context": {"id": connected.course.context_id, "title": connected.course.title},
        LTI + "resource_link": {"id": connected.seeded.resource_link.resource_link_id},
        LTI + "launch_presentation": {"return_url": f"{connected.base_url}/sandbox-lms/return/"},
        LTI + "tool_platform": {"guid": "sandbox-guid", "name": "Sandbox LMS", "product_family_code": "canvas"},
    }
    for name, value in overrides.items():
        key = name if not name.startswith("lti_") else LTI + name[4:]
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


def post(http, login, token):
    return http.post(login["redirect_uri"], data={"id_token": token, "state": login["state"]}, allow_redirects=False, timeout=10)


WRITTEN_BY_A_LAUNCH = (
    LtiUser, LtiContext, LtiResourceLink, LtiDeployment, LtiPlatformInstance, Course, Launch, Attempt, Session,
)


def rows() -> dict[str, int]:
    """How many rows each table a launch (or login) could write holds."""
    return {model.__name__: model.objects.count() for model in WRITTEN_BY_A_LAUNCH}


def assert_refused(response, before: dict[str, int], *, status: int, reason: str, **written: int) -> None:
    """A refusal page with this status and reason, and no row written but the `written` ones (name=count)."""
    assert response.status_code == status, response.text[:500]
    assert reason in html.unescape(response.text), html.unescape(response.text)[-800:]
    assert "Traceback" not in response.text
    assert "sessionid" not in response.cookies
    assert rows() == {name: count + written.get(name, 0) for name, count in before.items()}


def refused(connected, *, expect_status, expect_reason, sign=None, headers=None, **overrides):
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    claims = claims_for(connected, login, **overrides)
    before = rows()
    token = sign(claims) if sign else jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid, **(headers or {})})
    response = post(http, login, token)
    assert_refused(response, before, status=expect_status, reason=expect_reason)
    return response


def verified_but_unconnected(response) -> bool:
    """Past every check: the sandbox's seeded link is not one of our activities, which is said last
    (back to the LMS with lti_errormsg), so reaching it proves the token was verified."""
    return response.status_code == 302 and "lti_errormsg=This+link+is+not+connected" in response.headers["Location"]


def test_a_well_formed_token_is_accepted(connected):
    """The control case: the crafting itself is right, so each refusal below is due to its one fault."""
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    response = post(http, login, jwt.encode(claims_for(connected, login), pem, algorithm="RS256", headers={"kid": kid}))
    # The sandbox's seeded link is not one of our activities: the tool says so only after a verified
    # launch (the reason is reached past every check), and, the launch leading nowhere, writes nothing.
    assert verified_but_unconnected(response)
    assert not Launch.objects.exists() and not LtiUser.objects.filter(sub=connected.students[0].sub).exists()


def test_a_well_formed_instructor_launch_is_recorded(connected):
    """An instructor's launch of a link that is not one of ours still leads somewhere: the schedule."""
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.instructor)
    pem, kid = platform_key(connected)
    claims = claims_for(connected, login, sub=connected.instructor.sub,
                        lti_roles=["http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"])
    response = post(http, login, jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid}))
    assert response.status_code == 302 and response.headers["Location"].endswith("/courseware/schedule/")
    assert Launch.objects.filter(role="instructor").count() == 1


def test_a_learners_deep_linking_request_is_refused_before_anything_is_written(connected):
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    claims = claims_for(connected, login, lti_message_type="LtiDeepLinkingRequest", lti_resource_link=None)
    claims["https://purl.imsglobal.org/spec/lti-dl/claim/deep_linking_settings"] = {
        "deep_link_return_url": f"{connected.base_url}/sandbox-lms/return/"}
    users = LtiUser.objects.count()
    response = post(http, login, jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid}))
    assert response.status_code == 302 and "lti_errormsg=Only+instructors" in response.headers["Location"]
    assert not Launch.objects.exists() and LtiUser.objects.count() == users


def test_forged_signature(connected):
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _, kid = platform_key(connected)
    refused(connected, expect_status=401, expect_reason="signature does not match",
            sign=lambda c: jwt.encode(c, forger, algorithm="RS256", headers={"kid": kid}))


def test_alg_none(connected):
    _, kid = platform_key(connected)
    refused(connected, expect_status=401, expect_reason="only RS256 is accepted",
            sign=lambda c: jwt.encode(c, None, algorithm="none", headers={"kid": kid}))


def test_hs256_signed_with_the_public_key(connected):
    _, kid = platform_key(connected)
    refused(connected, expect_status=401, expect_reason="only RS256 is accepted",
            sign=lambda c: jwt.encode(c, "public-key-as-secret-" * 3, algorithm="HS256", headers={"kid": kid}))


def test_malformed_token(connected):
    refused(connected, expect_status=400, expect_reason="not a valid JWT", sign=lambda c: "not.a.jwt")


def test_unknown_kid(connected):
    pem, _ = platform_key(connected)
    refused(connected, expect_status=401, expect_reason="does not publish",
            sign=lambda c: jwt.encode(c, pem, algorithm="RS256", headers={"kid": "no-such-key"}))


def test_unknown_issuer(connected):
    refused(connected, expect_status=401, expect_reason="not registered", iss="https://evil.example")


def test_audience_without_our_client_id(connected):
    refused(connected, expect_status=401, expect_reason="not registered", aud="someone-else")


def sibling_registration(connected, client_id="other-tool"):
    """Another registration of the same LMS (issuer): an audience this tool trusts, but not the login's."""
    registration = connected.registration
    return LtiRegistration.objects.create(
        name="Sibling", issuer=registration.issuer, client_id=client_id, auth_url=registration.auth_url,
        token_url=registration.token_url, keyset_url=registration.keyset_url, uuid=uuid.uuid4(),
    )


def test_an_extra_untrusted_audience_is_refused(connected):
    """Security Framework §5.1.3 step 3: a token also addressed to a tool we do not know, even with azp ours."""
    refused(connected, expect_status=401, expect_reason="an audience this tool does not trust",
            aud=[connected.registration.client_id, "other-tool"], azp=connected.registration.client_id)


def test_several_audiences_with_a_foreign_azp(connected):
    sibling_registration(connected)
    refused(connected, expect_status=401, expect_reason="azp 'someone-else' is not our client id",
            aud=[connected.registration.client_id, "other-tool"], azp="someone-else")


def test_several_audiences_without_azp(connected):
    sibling_registration(connected)
    refused(connected, expect_status=401, expect_reason="several audiences and no azp",
            aud=[connected.registration.client_id, "other-tool"])


def test_a_single_audience_with_a_foreign_azp(connected):
    """azp, when present, must be our client id even when aud is a plain string."""
    refused(connected, expect_status=401, expect_reason="azp 'other-tool' is not our client id",
            aud=connected.registration.client_id, azp="other-tool")


def test_a_token_for_a_sibling_registration_answering_our_login(connected):
    """Both audiences trusted, azp the sibling: the token is not for the registration the login was for."""
    sibling_registration(connected)
    refused(connected, expect_status=401, expect_reason="another registration than the login",
            aud=[connected.registration.client_id, "other-tool"], azp="other-tool")


@pytest.mark.parametrize(
    "aud,azp",
    [([None], None), (["ok", 7], None), ([["nested"]], None), ({"client": "x"}, None), ("x" * 300, None), (None, 5)],
    ids=["null-entry", "number-entry", "list-entry", "object", "too-long", "azp-number"],
)
def test_malformed_audiences_are_refused(connected, aud, azp):
    overrides = {"aud": aud if aud is not None else connected.registration.client_id}
    if azp is not None:
        overrides["azp"] = azp
    if aud == ["ok", 7]:
        overrides["aud"] = [connected.registration.client_id, 7]
    refused(connected, expect_status=401, expect_reason="malformed" if azp is None else "azp is not a client id",
            **overrides)


def test_expired(connected):
    refused(connected, expect_status=401, expect_reason="expired", exp=int(time.time()) - 60, iat=int(time.time()) - 400)


def test_issued_in_the_future(connected):
    refused(connected, expect_status=401, expect_reason="issued in the future", iat=int(time.time()) + 120)


def test_a_little_clock_skew_is_tolerated(connected):
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    token = jwt.encode(claims_for(connected, login, iat=int(time.time()) + 2), pem, algorithm="RS256", headers={"kid": kid})
    assert verified_but_unconnected(post(http, login, token))


def test_missing_nonce(connected):
    refused(connected, expect_status=401, expect_reason="'nonce'", nonce=None)


def test_nonce_not_issued_by_our_login(connected):
    refused(connected, expect_status=401, expect_reason="nonce was not issued", nonce=uuid.uuid4().hex)


def test_replayed_token(connected):
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    token = jwt.encode(claims_for(connected, login), pem, algorithm="RS256", headers={"kid": kid})
    assert verified_but_unconnected(post(http, login, token))
    launches = Launch.objects.count()
    again = post(http, login, token)
    assert again.status_code == 401 and "already used" in again.text
    assert Launch.objects.count() == launches


def test_state_missing_from_the_browser(connected):
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    token = jwt.encode(claims_for(connected, login), pem, algorithm="RS256", headers={"kid": kid})
    response = lms.browser().post(login["redirect_uri"], data={"id_token": token, "state": login["state"]}, timeout=10)
    assert response.status_code == 401 and "cookie" in response.text


@pytest.mark.parametrize(
    "overrides,reason",
    [
        ({"lti_message_type": "LtiSubmissionReviewRequest"}, "does not handle LtiSubmissionReviewRequest"),
        ({"lti_version": "1.1"}, "Only LTI 1.3.0"),
        ({"sub": None}, "no user (sub)"),
        ({"lti_roles": None}, "no roles claim"),
        ({"lti_context": None}, "no course (context)"),
        ({"lti_resource_link": None}, "no resource link"),
        ({"lti_deployment_id": None}, "no deployment_id"),
    ],
)
def test_missing_claims_and_wrong_message(connected, overrides, reason):
    refused(connected, expect_status=400, expect_reason=reason, **overrides)


def test_unknown_deployment_is_shown_pending_and_the_lms_gets_the_error(connected):
    """The onboarding feature: the pending deployment (and the platform instance describing it), nothing else."""
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    token = jwt.encode(claims_for(connected, login, lti_deployment_id="new-sub-account"), pem, algorithm="RS256", headers={"kid": kid})
    before = rows()
    response = post(http, login, token)
    assert response.status_code == 302
    assert "lti_errormsg=" in response.headers["Location"] and "/sandbox-lms/return/" in response.headers["Location"]
    assert "sessionid" not in response.cookies
    assert rows() == {**before, "LtiDeployment": before["LtiDeployment"] + 1, "LtiPlatformInstance": before["LtiPlatformInstance"] + 1}
    pending = LtiDeployment.objects.get(deployment_id="new-sub-account")
    assert not pending.is_active and not hasattr(pending, "ownership")
    assert pending.platform_instance is not None and pending.platform_instance.guid == "sandbox-guid"


def test_an_unknown_deployment_does_not_rewrite_a_known_platform_instance(connected):
    LtiPlatformInstance.objects.create(issuer=connected.registration.issuer, guid="sandbox-guid", name="Sandbox LMS")
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    claims = claims_for(connected, login, lti_deployment_id="another-sub-account",
                        lti_tool_platform={"guid": "sandbox-guid", "name": "Renamed by the launch"})
    before = rows()
    assert post(http, login, jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})).status_code == 302
    assert rows() == {**before, "LtiDeployment": before["LtiDeployment"] + 1}
    assert LtiPlatformInstance.objects.get(guid="sandbox-guid").name == "Sandbox LMS"


@pytest.mark.parametrize("deployment_id", ["d" * 256, ["dep"], {"id": "dep"}, "dep\x00nul"], ids=["too-long", "list", "object", "nul"])
def test_a_malformed_unknown_deployment_id_creates_no_pending_deployment(connected, deployment_id):
    refused(connected, expect_status=400, expect_reason="deployment_id", lti_deployment_id=deployment_id)


def test_inactive_deployment_is_refused_with_a_page(live_server, two_institutions):
    connected = lms.connect(live_server.url, two_institutions[0], active=False)
    response = lms.launch(lms.browser(), user=connected.students[0], resource_link=connected.seeded.resource_link)
    # The sandbox follows the return_url redirect and shows the LMS's error banner.
    assert "waiting for activation" in response.text


def test_deployment_of_an_inactive_institution_is_refused(live_server, two_institutions):
    north = two_institutions[0]
    north.is_active = False
    north.save()
    connected = lms.connect(live_server.url, north)
    response = lms.launch(lms.browser(), user=connected.students[0], resource_link=connected.seeded.resource_link)
    assert "is not active in this tool" in response.text
    assert not Launch.objects.exists()


def test_the_launch_url_refuses_a_get(live_server):
    response = lms.browser().get(f"{live_server.url}/lti/launch/", timeout=10)
    assert response.status_code == 405 and "receives LTI launches" in response.text


# --- The token answers the login of its state: nonce, target_link_uri, single use -------------------


def test_target_link_uri_other_than_the_login_asked_for(connected):
    """The login asked for one target; a token for another (a link elsewhere in the tool) is refused."""
    refused(connected, expect_status=401, expect_reason="is not the one its login asked for",
            lti_target_link_uri=f"{connected.base_url}/lti/pick/")


def deep_linking_login(http, connected) -> dict[str, str]:
    initiation = api.start_deep_linking(user=connected.instructor, course=connected.course)
    response = http.post(initiation.url, data=initiation.params, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text[:300]
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}


def deep_linking_claims(connected, login, **overrides):
    claims = claims_for(connected, login, lti_message_type="LtiDeepLinkingRequest", lti_resource_link=None,
                        lti_roles=["http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"], **overrides)
    claims["sub"] = connected.instructor.sub
    claims["https://purl.imsglobal.org/spec/lti-dl/claim/deep_linking_settings"] = {
        "deep_link_return_url": f"{connected.base_url}/sandbox-lms/deep-linking/x/return/",
        "accept_types": ["ltiResourceLink"], "accept_presentation_document_targets": ["iframe"],
    }
    return claims


def test_deep_linking_target_link_uri_must_match_the_login_too(connected):
    http = lms.browser()
    login = deep_linking_login(http, connected)
    pem, kid = platform_key(connected)
    claims = deep_linking_claims(connected, login, lti_target_link_uri="https://elsewhere.example/launch")
    before = rows()
    response = post(http, login, jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid}))
    assert_refused(response, before, status=401, reason="is not the one its login asked for")
    # The control: the same request with the login's target goes to the picker.
    login = deep_linking_login(http, connected)
    claims = deep_linking_claims(connected, login)
    response = post(http, login, jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid}))
    assert response.status_code == 302 and response.headers["Location"].endswith("/lti/pick/")


def test_nonce_of_another_login_of_this_tool(connected):
    """Two logins in one browser: the nonce our login issued for the first cannot answer the second's state."""
    http = lms.browser()
    first = lms.login_for_crafted_token(http, connected, connected.students[0])
    second = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    token = jwt.encode(claims_for(connected, first), pem, algorithm="RS256", headers={"kid": kid})
    before = rows()
    response = post(http, second, token)
    assert_refused(response, before, status=401, reason="nonce was not issued by this tool's login for this launch")
    assert verified_but_unconnected(post(http, first, token))  # its own state: verified


def test_a_state_this_tool_never_issued_even_with_its_cookie(connected):
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    forged_state = f"state-{uuid.uuid4()}"
    http.cookies.set(f"lti1p3-{forged_state}", forged_state)
    pem, kid = platform_key(connected)
    token = jwt.encode(claims_for(connected, login), pem, algorithm="RS256", headers={"kid": kid})
    before = rows()
    response = post(http, {**login, "state": forged_state}, token)
    assert_refused(response, before, status=401, reason="expired or was not made by this tool")


@pytest.mark.parametrize("state", ["x" * 5000, "state-../../etc", "state-" + "0" * 36 + "\n"], ids=["huge", "path", "newline"])
def test_a_state_not_of_our_making(connected, state):
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    token = jwt.encode(claims_for(connected, login), pem, algorithm="RS256", headers={"kid": kid})
    before = rows()
    response = post(http, {**login, "state": state}, token)
    assert_refused(response, before, status=401, reason="state was not issued by this tool's login")


# --- The POST itself: one id_token, bounded, a form Django can read --------------------------------


def crafted(connected):
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    return http, login, jwt.encode(claims_for(connected, login), pem, algorithm="RS256", headers={"kid": kid})


@pytest.mark.parametrize(
    "fields,reason",
    [
        ([("state", "s")], "sent no id_token"),
        ([("id_token", ""), ("state", "s")], "sent no id_token"),
        ([("id_token", "TOKEN"), ("id_token", "TOKEN"), ("state", "s")], "2 values of id_token"),
        ([("id_token", "TOKEN"), ("state", "STATE"), ("state", "STATE")], "2 values of state"),
    ],
    ids=["none", "empty", "two-tokens", "two-states"],
)
def test_the_launch_post_carries_exactly_one_id_token_and_state(connected, fields, reason):
    http, login, token = crafted(connected)
    data = [(name, {"TOKEN": token, "STATE": login["state"]}.get(value, value)) for name, value in fields]
    before = rows()
    response = http.post(login["redirect_uri"], data=data, allow_redirects=False, timeout=10)
    assert_refused(response, before, status=400, reason=reason)


def test_an_oversized_token_is_refused_before_it_is_decoded(connected):
    refused(connected, expect_status=413, expect_reason="at most 64 KB", padding="x" * (65 * 1024))


def test_an_oversized_body_is_refused(connected):
    http, login, _ = crafted(connected)
    before = rows()
    response = http.post(login["redirect_uri"], data={"id_token": "x" * (3 * 1024 * 1024), "state": login["state"]}, timeout=30)
    assert_refused(response, before, status=413, reason="too large")


def test_an_undecodable_body_is_refused(connected):
    http, login, _ = crafted(connected)
    before = rows()
    body = b"id_token=\xff\xfe%ff.%fe.%00&state=" + login["state"].encode()
    response = http.post(login["redirect_uri"], data=body, timeout=10,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_refused(response, before, status=400, reason="not valid UTF-8")


def test_a_broken_multipart_body_is_refused(connected):
    http, login, _ = crafted(connected)
    before = rows()
    response = http.post(login["redirect_uri"], data=b"--x\r\ngarbage", timeout=10,
                         headers={"Content-Type": "multipart/form-data"})
    assert_refused(response, before, status=400, reason="could not be read as a form")


# --- Header and time claims of odd types: a refusal, never a TypeError ------------------------------


def unsigned(header: dict, claims: dict) -> str:
    segment = lambda value: base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{segment(header)}.{segment(claims)}.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    "header,reason",
    [
        ({"alg": "RS256", "kid": 5}, "not a valid JWT"),
        ({"alg": "RS256", "kid": "k" * 300}, "names no key (kid)"),
        ({"alg": "RS256"}, "names no key (kid)"),
        ({"alg": ["RS256"], "kid": "k"}, "only RS256 is accepted"),
        (["RS256"], "not a valid JWT"),
    ],
    ids=["kid-number", "kid-huge", "kid-missing", "alg-list", "header-list"],
)
def test_malformed_headers(connected, header, reason):
    status = 400 if "JWT" in reason else 401
    refused(connected, expect_status=status, expect_reason=reason, sign=lambda c: unsigned(header, c))


@pytest.mark.parametrize("name", ["iat", "exp", "nbf"])
@pytest.mark.parametrize("value", ["1700000000", [1], {"t": 1}, True, float("nan"), float("inf")],
                         ids=["string", "list", "object", "bool", "nan", "infinity"])
def test_times_that_are_not_numbers(connected, name, value):
    refused(connected, expect_status=401, expect_reason=f"{name} is not a number", **{name: value})


def test_an_absurd_expiry_is_harmless(connected):
    """exp far in the future (an integer past any float): verified, the nonce still single-use."""
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    token = jwt.encode(claims_for(connected, login, exp=10**400), pem, algorithm="RS256", headers={"kid": kid})
    assert verified_but_unconnected(post(http, login, token))
    assert post(http, login, token).status_code == 401


@pytest.mark.parametrize(
    "overrides,status,reason",
    [
        ({"lti_message_type": "\ud800"}, 400, "does not handle \\ud800 messages"),
        ({"lti_message_type": ["LtiResourceLinkRequest"]}, 400, "does not handle unnamed messages"),
        ({"iss": "\ud800"}, 401, "issuer or audience is malformed"),
        ({"aud": "client\ud800"}, 401, "issuer or audience is malformed"),
    ],
    ids=["surrogate-message-type", "list-message-type", "surrogate-iss", "surrogate-aud"],
)
def test_text_that_is_not_unicode_is_refused_and_shown_escaped(connected, overrides, status, reason):
    refused(connected, expect_status=status, expect_reason=reason, **overrides)


def test_behind_a_tls_proxy_the_state_and_nonce_live_under_the_login_session_cookie(connected, settings):
    """Over https pylti1p3 keys what the login remembers by its session-id cookie: the launch from the
    browser that logged in is verified; the same state and nonce from a browser without it are refused."""
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxied = {"X-Forwarded-Proto": "https"}
    start = api.start_launch(user=connected.students[0], resource_link=connected.seeded.resource_link)
    response = lms.browser().post(start.url, data=start.params, headers=proxied, allow_redirects=False, timeout=10)
    assert response.status_code == 302
    login = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}
    cookies = {name: value for name, value in response.cookies.items()}  # Secure cookies: passed by hand
    assert "lti1p3-session-id" in cookies and f"lti1p3-{login['state']}" in cookies
    pem, kid = platform_key(connected)
    claims = claims_for(connected, login, lti_target_link_uri=start.params["target_link_uri"])
    token = jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})
    plain_http_to_the_proxy = login["redirect_uri"].replace("https://", "http://", 1)

    def launch(cookie_names):
        header = "; ".join(f"{name}={cookies[name]}" for name in cookie_names)
        return lms.browser().post(plain_http_to_the_proxy, data={"id_token": token, "state": login["state"]},
                                  headers={**proxied, "Cookie": header}, allow_redirects=False, timeout=10)

    before = rows()
    assert_refused(launch([f"lti1p3-{login['state']}"]), before, status=401, reason="did not keep the login session cookie")
    other_session = lms.browser().post(start.url, data=start.params, headers=proxied, allow_redirects=False, timeout=10)
    cookies["lti1p3-session-id"], mine = other_session.cookies["lti1p3-session-id"], cookies["lti1p3-session-id"]
    assert_refused(launch(list(cookies)), before, status=401, reason="expired or was not made by this tool")
    cookies["lti1p3-session-id"] = mine
    assert verified_but_unconnected(launch(list(cookies)))
