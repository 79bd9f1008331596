"""Deep linking: a pylti1p3 response is accepted; bad responses are refused with a reason."""
from __future__ import annotations

import time
import uuid

import jwt
import pytest
import requests

from sandbox_lms import api, protocol

from . import pytool

pytestmark = pytest.mark.django_db(transaction=True)

DL = "https://purl.imsglobal.org/spec/lti-dl/claim/"
LTI = "https://purl.imsglobal.org/spec/lti/claim/"


def test_a_pylti1p3_deep_linking_response_creates_links_and_line_items(sandbox):
    pytool.TOOL.deep_link_items = [
        {"url": "https://tool.example/a/1", "title": "Lab 1",
         "line_item": {"scoreMaximum": 50, "label": "Lab 1 score", "resourceId": "lab-1", "tag": "lab"}},
        {"url": "https://tool.example/a/2", "title": "Reading 2",
         "line_item": {"scoreMaximum": 10, "label": "Reading 2", "resourceId": "reading-2", "tag": "reading"}},
    ]
    http = requests.Session()
    initiation = api.start_deep_linking(user=sandbox.instructor, course=sandbox.course)

    tool_page = api.follow_launch(http, initiation)
    action, fields = api.parse_autopost(tool_page.text)
    answer = http.post(action, data=fields, timeout=10)

    assert answer.status_code == 200, answer.text
    assert "Lab 1" in answer.text and "out of 50" in answer.text
    lab = sandbox.course.line_items.get(resource_id="lab-1")
    assert (lab.label, lab.score_maximum, lab.tag, lab.resource_link.title, lab.resource_link.url) == (
        "Lab 1 score", 50, "lab", "Lab 1", "https://tool.example/a/1"
    )
    assert sandbox.course.resource_links.count() == 3


def test_a_student_cannot_add_activities(sandbox):
    with pytest.raises(protocol.Refusal, match="Only instructors"):
        api.start_deep_linking(user=sandbox.students[0], course=sandbox.course)


def _request_claims(seeded, **kwargs):
    initiation = api.start_deep_linking(user=seeded.instructor, course=seeded.course, **kwargs)
    response = requests.get(seeded.auth_url, params={
        "scope": "openid", "response_type": "id_token", "response_mode": "form_post",
        "client_id": seeded.registration.client_id, "redirect_uri": seeded.registration.launch_url,
        "login_hint": initiation.params["login_hint"], "lti_message_hint": initiation.params["lti_message_hint"],
        "state": "s", "nonce": "n",
    }, timeout=5)
    _, fields = api.parse_autopost(response.text)
    return jwt.decode(fields["id_token"], options={"verify_signature": False})


def _response_jwt(seeded, request_claims, **overrides):
    settings = request_claims[DL + "deep_linking_settings"]
    now = int(time.time())
    claims = {
        "iss": seeded.registration.client_id, "aud": seeded.platform.issuer, "iat": now, "exp": now + 600,
        "nonce": uuid.uuid4().hex, LTI + "message_type": "LtiDeepLinkingResponse", LTI + "version": "1.3.0",
        LTI + "deployment_id": seeded.deployment.deployment_id, DL + "data": settings["data"],
        DL + "content_items": [{"type": "ltiResourceLink", "title": "Quiz", "lineItem": {"scoreMaximum": 5}}],
    }
    claims.update(overrides)
    kid = pytool.TOOL.conf.get_jwks(pytool.TOOL.issuer, pytool.TOOL.client_id)["keys"][0]["kid"]
    return settings["deep_link_return_url"], jwt.encode(claims, pytool.PRIVATE_PEM, algorithm="RS256", headers={"kid": kid})


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "https://another.example"}, "Audience doesn&#x27;t match"),
        ({"iss": "not-the-client"}, "is not the tool&#x27;s client_id"),
        ({"nonce": None}, "nonce is missing"),
        ({DL + "msg": None}, "null fields are not allowed (leave them out): https://purl.imsglobal.org/spec/lti-dl/claim/msg"),
        ({DL + "data": "tampered"}, "data was not echoed exactly"),
        ({LTI + "deployment_id": "other-deployment"}, "deployment_id"),
        ({"exp": int(time.time()) - 60}, "Signature has expired"),
        ({DL + "content_items": [{"type": "ltiResourceLink", "title": "Quiz", "lineItem": {"scoreMaximum": 5, "tag": None}}]},
         "content_items[0].lineItem.tag"),
        ({DL + "content_items": [{"type": "ltiResourceLink", "title": "Quiz", "lineItem": {"scoreMaximum": 0}}]},
         "scoreMaximum must be a number greater than 0"),
        ({DL + "errormsg": "The picker crashed"}, "The tool reported an error: The picker crashed"),
    ],
)
def test_a_bad_deep_linking_response_is_refused_with_its_reason(sandbox, overrides, reason):
    return_url, token = _response_jwt(sandbox, _request_claims(sandbox), **overrides)

    response = requests.post(return_url, data={"JWT": token}, timeout=5)

    assert response.status_code == 400
    assert reason in response.text
    assert sandbox.course.resource_links.count() == 1
    assert api.request_log(registration=sandbox.registration, kind="deep_linking_return")[-1].status == 400


def test_a_response_signed_by_another_key_is_refused(sandbox):
    return_url, _ = _response_jwt(sandbox, _request_claims(sandbox))
    other = jwt.encode({"iss": "x"}, api.SandboxPlatform.objects.get().keys.get().private_pem, algorithm="RS256",
                       headers={"kid": "unknown-kid"})

    response = requests.post(return_url, data={"JWT": other}, timeout=5)

    assert response.status_code == 400 and "No key with kid" in response.text


def test_a_replayed_response_is_refused_and_accept_multiple_is_enforced(sandbox):
    claims = _request_claims(sandbox, accept_multiple=False)
    assert claims[DL + "deep_linking_settings"]["accept_multiple"] is False
    two = [{"type": "ltiResourceLink", "title": "A"}, {"type": "ltiResourceLink", "title": "B"}]
    return_url, too_many = _response_jwt(sandbox, claims, **{DL + "content_items": two})
    _, one = _response_jwt(sandbox, claims)

    refused = requests.post(return_url, data={"JWT": too_many}, timeout=5)
    accepted = requests.post(return_url, data={"JWT": one}, timeout=5)
    _, again = _response_jwt(sandbox, claims)
    replayed = requests.post(return_url, data={"JWT": again}, timeout=5)

    assert refused.status_code == 400 and "accept_multiple was false" in refused.text
    assert accepted.status_code == 200
    assert replayed.status_code == 400 and "already answered" in replayed.text
    assert sandbox.course.line_items.filter(label="Quiz", score_maximum=5).count() == 1
