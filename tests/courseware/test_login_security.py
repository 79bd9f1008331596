"""The OIDC login initiation refuses every malformed, oversized or mis-addressed request with a 4xx page
saying why, and writes nothing: no row, no session, no state cookie.

Requests start from what the sandbox LMS really sends for a launch (`api.start_launch`), altered one
fault at a time, and go to the tool's login URL over HTTP, as GET and as POST.
"""
from __future__ import annotations

import html
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from courseware.launch import login as login_module
from sandbox_lms import api
from tests import lms
from tests.courseware.test_launch_security import rows

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def connected(live_server, two_institutions):
    return lms.connect(live_server.url, two_institutions[0])


def initiation(connected):
    return api.start_launch(user=connected.students[0], resource_link=connected.seeded.resource_link)


def send(method: str, url: str, params) -> "requests.Response":  # noqa: F821
    http = lms.browser()
    if method == "GET":
        return http.get(url, params=params, allow_redirects=False, timeout=10)
    return http.post(url, data=params, allow_redirects=False, timeout=10)


def assert_refused(response, before, *, status: int, reason: str) -> None:
    assert response.status_code == status, response.text[:500]
    assert reason in html.unescape(response.text), html.unescape(response.text)[-600:]
    assert "Traceback" not in response.text
    assert not [name for name in response.cookies.keys() if name.startswith("lti1p3-") or name == "sessionid"]
    assert rows() == before


def refused(connected, method, *, status=400, reason, url=None, **changes):
    start = initiation(connected)
    params = {**start.params, **changes}
    params = {name: value for name, value in params.items() if value is not None}
    before = rows()
    response = send(method, url or start.url, params)
    assert_refused(response, before, status=status, reason=reason)
    return response


METHODS = pytest.mark.parametrize("method", ["GET", "POST"])


@METHODS
def test_a_well_formed_login_redirects_to_the_lms_and_remembers_the_state(connected, method):
    """The control case: each refusal below differs from this request by one fault."""
    start = initiation(connected)
    before = rows()
    response = send(method, start.url, start.params)
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["login_hint"] == [start.params["login_hint"]] and query["client_id"] == [connected.registration.client_id]
    assert any(name.startswith("lti1p3-state-") for name in response.cookies.keys())
    assert rows() == before  # a login writes no row, not even a session


@METHODS
def test_unknown_registration_uuid(connected, method):
    refused(connected, method, status=404, reason="not one of this tool's LMS registrations",
            url=f"{connected.base_url}/lti/login/{uuid.uuid4()}/")


@METHODS
def test_switched_off_registration(connected, method):
    connected.registration.is_active = False
    connected.registration.save()
    refused(connected, method, status=404, reason="not one of this tool's LMS registrations")


@METHODS
def test_unknown_issuer(connected, method):
    refused(connected, method, reason="registered for another LMS than the issuer 'https://evil.example'",
            iss="https://evil.example")


@METHODS
@pytest.mark.parametrize("value", [None, ""], ids=["missing", "empty"])
@pytest.mark.parametrize("name", ["iss", "login_hint", "target_link_uri"])
def test_required_parameters(connected, method, name, value):
    refused(connected, method, reason=f"has no {name}", **{name: value})


@METHODS
def test_unknown_client_id(connected, method):
    refused(connected, method, reason="client_id 'someone-else' is not the one registered", client_id="someone-else")


@METHODS
def test_a_login_without_client_id_is_for_the_registration_of_its_address(connected, method):
    """client_id is optional in a login initiation (LTI Core §4.1): the login URL names the registration."""
    start = initiation(connected)
    response = send(method, start.url, {k: v for k, v in start.params.items() if k != "client_id"})
    assert response.status_code == 302
    assert parse_qs(urlsplit(response.headers["Location"]).query)["client_id"] == [connected.registration.client_id]


@METHODS
@pytest.mark.parametrize("name", ["login_hint", "lti_message_hint"])
def test_oversized_hints_are_refused(connected, method, name):
    refused(connected, method, reason=f"{name} of 2049 bytes (URL-encoded); this tool accepts at most 2048",
            **{name: "h" * 2049})


@METHODS
def test_hints_are_measured_as_copied_into_the_redirect(connected, method):
    """800 characters that URL-encoding triples are over the cap; 2 KB of plain ones are not."""
    refused(connected, method, reason="login_hint of 2400 bytes", login_hint="/" * 800)
    start = initiation(connected)
    response = send(method, start.url, {**start.params, "login_hint": "h" * 2048, "lti_message_hint": "m" * 2048})
    assert response.status_code == 302
    assert len(response.headers["Location"]) < 2 * 2048 + len(connected.registration.auth_url) + 500


@METHODS
@pytest.mark.parametrize("target", ["javascript:alert(1)", "/relative/path", "https://" + "t" * 2050 + ".example/", "http://[::1"],
                         ids=["script", "relative", "huge", "unclosed-ipv6"])
def test_target_link_uri_must_be_a_bounded_web_address(connected, method, target):
    refused(connected, method, reason="target_link_uri that is not a web address", target_link_uri=target)


@METHODS
@pytest.mark.parametrize("name", ["iss", "client_id", "lti_deployment_id"])
def test_oversized_identifiers(connected, method, name):
    refused(connected, method, reason=f"{name} longer than 255 characters", **{name: "i" * 256})


@METHODS
@pytest.mark.parametrize("name", ["iss", "login_hint", "client_id"])
def test_control_characters(connected, method, name):
    refused(connected, method, reason=f"control characters in its {name}", **{name: "bad\x00value"})


def test_a_parameter_sent_twice(connected):
    start = initiation(connected)
    before = rows()
    fields = list(start.params.items()) + [("iss", "https://evil.example")]
    response = lms.browser().post(start.url, data=fields, allow_redirects=False, timeout=10)
    assert_refused(response, before, status=400, reason="carries 2 values of iss")


def test_an_undecodable_body(connected):
    start = initiation(connected)
    before = rows()
    body = "&".join(f"{k}={v}" for k, v in start.params.items() if k != "login_hint").encode() + b"&login_hint=\xff\xfe"
    response = lms.browser().post(start.url, data=body, allow_redirects=False, timeout=10,
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_refused(response, before, status=400, reason="not valid UTF-8")


def test_an_undecodable_query_string(connected):
    start = initiation(connected)
    before = rows()
    response = lms.browser().get(f"{start.url}?iss=%FF%FE&login_hint=x&target_link_uri=https://a.example/",
                                 allow_redirects=False, timeout=10)
    assert_refused(response, before, status=400, reason="not valid UTF-8: its iss could not be decoded")


def test_a_broken_multipart_body(connected):
    start = initiation(connected)
    before = rows()
    response = lms.browser().post(start.url, data=b"--x\r\nnot a part", allow_redirects=False, timeout=10,
                                  headers={"Content-Type": "multipart/form-data; boundary="})
    assert_refused(response, before, status=400, reason="could not be read as a form")


def test_an_oversized_body(connected):
    start = initiation(connected)
    before = rows()
    response = lms.browser().post(start.url, data={**start.params, "padding": "p" * (3 * 1024 * 1024)},
                                  allow_redirects=False, timeout=30)
    assert_refused(response, before, status=413, reason="too large")


@METHODS
def test_a_refusal_from_pylti1p3_itself_is_a_page_not_a_500(connected, method, monkeypatch):
    """pylti1p3 raises OIDCException (not an LtiException) when it finds no registration; the live
    server runs in this process, so its lookup is made to fail after our own checks passed."""
    monkeypatch.setattr(login_module.DjangoToolConfig, "find_registration_by_params", lambda self, *a, **k: None)
    refused(connected, method, reason="The LMS's login request was refused: Could not find registration details")
