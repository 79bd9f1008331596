"""Every check of the Security Framework §5.1.3 refuses a bad id_token with a clear 4xx, and writes nothing.

Tokens are crafted here with the sandbox platform's own key (or a forger's), after a real login
initiation through the tool, and posted to the tool's launch endpoint over HTTP.
"""
from __future__ import annotations

import html
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lti_tool.models import LtiDeployment, LtiUser

from courseware.models import Launch
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


def nothing_written(before_users: int, before_launches: int) -> bool:
    return LtiUser.objects.count() == before_users and Launch.objects.count() == before_launches


def refused(connected, *, expect_status, expect_reason, sign=None, headers=None, **overrides):
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    claims = claims_for(connected, login, **overrides)
    users, launches = LtiUser.objects.count(), Launch.objects.count()
    token = sign(claims) if sign else jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid, **(headers or {})})
    response = post(http, login, token)
    assert response.status_code == expect_status, response.text[:500]
    assert expect_reason in html.unescape(response.text)
    assert "Traceback" not in response.text
    assert nothing_written(users, launches)
    return response


def test_a_well_formed_token_is_accepted(connected):
    """The control case: the crafting itself is right, so each refusal below is due to its one fault."""
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    response = post(http, login, jwt.encode(claims_for(connected, login), pem, algorithm="RS256", headers={"kid": kid}))
    # The sandbox's seeded link is not one of our activities: the tool says so, after a verified launch.
    assert response.status_code == 404 and "not connected to an activity" in response.text
    assert Launch.objects.filter(role="learner").count() == 1


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


def test_several_audiences_with_a_foreign_azp(connected):
    refused(connected, expect_status=401, expect_reason="azp is not our client id",
            aud=[connected.registration.client_id, "other-tool"], azp="other-tool")


def test_several_audiences_without_azp(connected):
    refused(connected, expect_status=401, expect_reason="azp is not our client id",
            aud=[connected.registration.client_id, "other-tool"])


def test_expired(connected):
    refused(connected, expect_status=401, expect_reason="expired", exp=int(time.time()) - 60, iat=int(time.time()) - 400)


def test_issued_in_the_future(connected):
    refused(connected, expect_status=401, expect_reason="issued in the future", iat=int(time.time()) + 120)


def test_a_little_clock_skew_is_tolerated(connected):
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    token = jwt.encode(claims_for(connected, login, iat=int(time.time()) + 2), pem, algorithm="RS256", headers={"kid": kid})
    assert post(http, login, token).status_code == 404  # verified; the link just has no activity


def test_missing_nonce(connected):
    refused(connected, expect_status=401, expect_reason="'nonce'", nonce=None)


def test_nonce_not_issued_by_our_login(connected):
    refused(connected, expect_status=401, expect_reason="nonce was not issued", nonce=uuid.uuid4().hex)


def test_replayed_token(connected):
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    token = jwt.encode(claims_for(connected, login), pem, algorithm="RS256", headers={"kid": kid})
    assert post(http, login, token).status_code == 404
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
    users = LtiUser.objects.count()
    http = lms.browser()
    login = lms.login_for_crafted_token(http, connected, connected.students[0])
    pem, kid = platform_key(connected)
    token = jwt.encode(claims_for(connected, login, lti_deployment_id="new-sub-account"), pem, algorithm="RS256", headers={"kid": kid})
    response = post(http, login, token)
    assert response.status_code == 302
    assert "lti_errormsg=" in response.headers["Location"] and "/sandbox-lms/return/" in response.headers["Location"]
    pending = LtiDeployment.objects.get(deployment_id="new-sub-account")
    assert not pending.is_active and not hasattr(pending, "ownership")
    assert pending.platform_instance is not None and pending.platform_instance.guid == "sandbox-guid"
    assert LtiUser.objects.count() == users


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
