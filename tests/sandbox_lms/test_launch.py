"""Launches validated by pylti1p3 (an independent tool), and the auth request's refusals."""
from __future__ import annotations

import jwt
import pytest
import requests

from sandbox_lms import api

pytestmark = pytest.mark.django_db(transaction=True)

LTI = "https://purl.imsglobal.org/spec/lti/claim/"
AGS = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_pylti1p3_validates_a_learner_launch(make_sandbox, method):
    seeded = make_sandbox()
    student = seeded.students[0]
    initiation = api.start_launch(user=student, resource_link=seeded.resource_link, method=method)

    answer = api.follow_launch(requests.Session(), initiation)

    assert answer.status_code == 200, answer.text
    claims = answer.json()["launch"]
    assert claims["sub"] == student.sub
    assert "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner" in claims[LTI + "roles"]
    assert claims[LTI + "context"]["id"] == seeded.course.context_id
    assert claims[LTI + "resource_link"]["id"] == seeded.resource_link.resource_link_id
    assert claims[LTI + "deployment_id"] == seeded.deployment.deployment_id
    assert claims[AGS]["lineitem"] == seeded.line_item_url
    assert claims[AGS]["lineitems"].endswith(f"/api/courses/{seeded.course.pk}/lineitems")
    assert claims["https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"]["context_memberships_url"]
    assert claims[LTI + "launch_presentation"]["return_url"].endswith(f"/courses/{seeded.course.pk}/return/")
    assert claims[LTI + "custom"]["course_start_date"] == seeded.course.starts_at.isoformat()
    assert claims[LTI + "tool_platform"]["guid"] == str(seeded.platform.guid)


def test_canvas_sends_course_dates_in_its_own_format_and_roles_per_enrolment(make_sandbox):
    seeded = make_sandbox(api.Profile.CANVAS)
    ta = api.create_user(platform=seeded.platform, name="Tia Assistant")
    api.enrol(course=seeded.course, user=ta, role=api.Role.TEACHING_ASSISTANT)
    tester = api.create_user(platform=seeded.platform, name="Test Student")
    api.enrol(course=seeded.course, user=tester, role=api.Role.TEST_USER)

    ta_claims = api.follow_launch(requests.Session(), api.start_launch(user=ta, resource_link=seeded.resource_link)).json()["launch"]
    test_claims = api.follow_launch(requests.Session(), api.start_launch(user=tester, resource_link=seeded.resource_link)).json()["launch"]

    start = seeded.course.starts_at.strftime("%Y-%m-%d %H:%M:%S +0000")
    assert ta_claims[LTI + "custom"]["course_start_date"] == start
    assert "http://purl.imsglobal.org/vocab/lis/v2/membership/Instructor#TeachingAssistant" in ta_claims[LTI + "roles"]
    assert "http://purl.imsglobal.org/vocab/lti/system/person#TestUser" in test_claims[LTI + "roles"]


def test_a_copied_course_has_new_ids_and_fills_the_history_variables(make_sandbox):
    seeded = make_sandbox()
    copy = api.copy_course(course=seeded.course)
    link = copy.resource_links.get()

    claims = api.follow_launch(requests.Session(), api.start_launch(user=seeded.students[0], resource_link=link)).json()["launch"]

    assert claims[LTI + "context"]["id"] not in ("", seeded.course.context_id)
    assert claims[LTI + "resource_link"]["id"] != seeded.resource_link.resource_link_id
    assert claims[LTI + "custom"]["context_id_history"] == seeded.course.context_id
    assert claims[LTI + "custom"]["resource_link_id_history"] == seeded.resource_link.resource_link_id
    copied_item = copy.line_items.get()
    assert (copied_item.label, copied_item.score_maximum, copied_item.resource_id) == (
        seeded.line_item.label, seeded.line_item.score_maximum, seeded.line_item.resource_id
    )
    second = api.copy_course(course=copy)
    assert second.history == f"{copy.context_id},{seeded.course.context_id}"


def test_a_rotated_key_is_published_beside_the_old_one_and_signs_new_launches(make_sandbox):
    seeded = make_sandbox()
    old_kid = seeded.platform.keys.get().kid
    new_kid = api.rotate_platform_key(platform=seeded.platform).kid

    published = {key["kid"] for key in requests.get(seeded.jwks_url, timeout=5).json()["keys"]}
    answer = api.follow_launch(requests.Session(), api.start_launch(user=seeded.students[0], resource_link=seeded.resource_link))

    assert {old_kid, new_kid} <= published
    assert answer.status_code == 200, answer.text


def _auth_params(seeded, **overrides):
    initiation = api.start_launch(user=seeded.students[0], resource_link=seeded.resource_link)
    params = {
        "scope": "openid", "response_type": "id_token", "response_mode": "form_post", "prompt": "none",
        "client_id": seeded.registration.client_id, "redirect_uri": seeded.registration.launch_url,
        "login_hint": initiation.params["login_hint"], "lti_message_hint": initiation.params["lti_message_hint"],
        "state": "s-1", "nonce": "n-1",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"redirect_uri": "https://evil.example/launch"}, "redirect_uri https://evil.example/launch is not registered"),
        ({"client_id": "someone-else"}, "client_id does not match the launch"),
        ({"login_hint": "another-user"}, "login_hint does not match"),
        ({"nonce": None}, "nonce is missing"),
        ({"state": None}, "state is missing"),
        ({"lti_message_hint": "not-a-launch"}, "lti_message_hint does not match"),
    ],
)
def test_the_auth_endpoint_refuses_a_bad_auth_request_with_its_reason(sandbox, overrides, reason):
    response = requests.get(sandbox.auth_url, params=_auth_params(sandbox, **overrides), timeout=5)

    assert response.status_code == 400
    assert reason in response.text
    assert "Not for production" in response.text


def test_a_good_auth_request_posts_a_signed_id_token_to_the_redirect_uri(sandbox):
    response = requests.post(sandbox.auth_url, data=_auth_params(sandbox), timeout=5)

    action, fields = api.parse_autopost(response.text)
    header = jwt.get_unverified_header(fields["id_token"])
    claims = jwt.decode(fields["id_token"], options={"verify_signature": False})
    assert action == sandbox.registration.launch_url
    assert fields["state"] == "s-1"
    assert header["alg"] == "RS256" and header["kid"] == sandbox.platform.keys.get().kid
    assert (claims["nonce"], claims["aud"], claims["iss"]) == ("n-1", sandbox.registration.client_id, sandbox.platform.issuer)
