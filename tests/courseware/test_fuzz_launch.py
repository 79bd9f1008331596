"""Fuzzing the tool's door: logins and launches built from arbitrary values never crash it, and a
refused launch writes nothing.

Requests go through Django's test client in-process (real URL routing, middleware and views) for
speed; the sandbox platform and its JWKS are served by live_server, and the tool fetches the key
over HTTP once, on the first (control) launch. Each example logs in afresh (its own state and
nonce) and then posts a token: signed with the platform's key from a valid launch with a few
claims mutated, or forged, unsigned or garbage.

`make test` runs 240 examples in all (derandomized: the same ones each run); `make fuzz` runs
FUZZ_EXAMPLES=10000 in all, new random ones each run.
"""
from __future__ import annotations

import copy
import html
import os
import re
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.sessions.models import Session
from django.test import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lti_tool.models import LtiContext, LtiDeployment, LtiLineItem, LtiMembership, LtiPlatformInstance, LtiResourceLink, LtiUser

from courseware.models import ActivityLink, Attempt, Launch
from gradesync.models import Result
from institutions.models import Course
from sandbox_lms import api
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

FUZZING = "FUZZ_EXAMPLES" in os.environ
# FUZZ_EXAMPLES is the total across the three properties: half for signed launches, a quarter each
# for forged/garbled launches and for logins. `make test` runs 240 in all.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "240"))


def fuzz(share: float):
    return settings(
        max_examples=max(1, int(EXAMPLES * share)),
        deadline=None,
        derandomize=not FUZZING,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )

# Rows a refused launch must not write. LtiDeployment (and the platform instance it names) only
# for the pending-deployment refusal, which is the onboarding feature.
WATCHED = {
    "LtiUser": LtiUser, "LtiContext": LtiContext, "LtiMembership": LtiMembership, "LtiResourceLink": LtiResourceLink,
    "LtiLineItem": LtiLineItem, "Course": Course, "Launch": Launch, "ActivityLink": ActivityLink, "Attempt": Attempt,
    "Result": Result, "Session": Session, "LtiDeployment": LtiDeployment, "LtiPlatformInstance": LtiPlatformInstance,
}
PENDING_MAY_WRITE = {"LtiDeployment", "LtiPlatformInstance"}


def row_counts() -> dict[str, int]:
    return {name: model.objects.count() for name, model in WATCHED.items()}


# --- Values: what a hostile or broken platform can put in a JSON claim -------------------------------

nasty_strings = st.sampled_from([
    "", " ", "\x00", "a\x00b", "\x01\x1f\x7f", "\u0085", "\ud800", "\u202e", "\ufeff", "0", "-1", "1e309", "NaN",
    "null", "true", "[]", "{}", "javascript:alert(1)", "http://", "https://",
    "http://[::1", "//evil.example/", "https://lms.example/ok", "data:,x",
    "$Canvas.course.startAt", "2026-01-15 00:00:00 -0700", "0001-01-01T00:00:00+14:00", "9999-12-31",
    "9999-12-31T23:59:59-12:00", "2026-02-30", "a@b", "@", "<script>alert(1)</script>",
    "' OR 1=1 --", "%00", "\r\nSet-Cookie: x=1",
])
# Long values as a length, so that a failing example's report stays readable.
long_strings = st.sampled_from([
    (255, "x"), (256, "x"), (500, "x"), (501, "x"), (300, "é"), (200, "https://lms.example/"),
    (201, "https://lms.example/"), (1000, "https://lms.example/"), (1001, "https://lms.example/"), (70_000, "x"),
]).map(lambda spec: spec[1] + "a" * (spec[0] - len(spec[1])) if spec[1].startswith("http") else spec[1] * spec[0])
strings = st.one_of(
    nasty_strings,
    long_strings,
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    st.text(max_size=300),
)
# What a browser can put in a form or a query string: no lone surrogates (they are not UTF-8).
wire_strings = strings.map(lambda text: text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), strings,
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(st.characters(codec=None, exclude_categories=()), max_size=12), children, max_size=4),
    max_leaves=12,
)
DELETE = object()
# A value of the wrong type for whatever claim it lands in, as often as any other kind.
wrong_types = st.sampled_from([None, True, False, 0, 7, -1, 1.5, 2**63, [], {}, ["x"], [7], {"id": "x"}, {"id": 7}])
lms_dates = st.one_of(
    nasty_strings,
    st.datetimes(timezones=st.timezones() | st.none()).map(lambda moment: moment.isoformat()),
    st.datetimes().map(lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S ") + "+1400"),
    st.dates().map(lambda day: day.isoformat()),
)
values = st.one_of(json_values, wrong_types, nasty_strings, long_strings, st.just(DELETE))


# --- The harness -----------------------------------------------------------------------------------


class Door:
    """The tool's login and launch endpoints, driven as a browser would, in-process."""

    def __init__(self, connected: lms.Connected, activity_id: int) -> None:
        self.connected = connected
        self.activity_id = activity_id
        key = connected.seeded.platform.keys.filter(is_published=True).order_by("-id").first()
        self.pem, self.kid = key.private_pem, key.kid
        student = connected.students[0]
        self.learner = api.start_launch(user=student, resource_link=connected.seeded.resource_link)
        self.instructor = api.start_launch(user=connected.instructor, course=connected.course, deep_linking=True)
        self.login_path = urlsplit(self.learner.url).path

    def login(self, client: Client, initiation: api.LoginInitiation) -> dict[str, str]:
        response = client.post(self.login_path, data=initiation.params)
        assert response.status_code == 302, response.content[:300]
        query = {k: v[0] for k, v in parse_qs(urlsplit(response["Location"]).query).items()}
        return {**query, "target_link_uri": initiation.params["target_link_uri"]}

    def claims(self, login: dict[str, str], *, deep_linking: bool) -> dict[str, Any]:
        """A complete, valid launch, with every optional claim a real LMS sends."""
        now = int(time.time())
        connected = self.connected
        user = connected.instructor if deep_linking else connected.students[0]
        claims: dict[str, Any] = {
            "iss": connected.registration.issuer,
            "aud": connected.registration.client_id,
            "azp": connected.registration.client_id,
            "sub": user.sub,
            "iat": now,
            "exp": now + 300,
            "nonce": login["nonce"],
            "given_name": "Ada", "family_name": "Learner", "name": "Ada Learner", "email": "ada@north.example",
            "picture": "https://lms.example/avatar.png", "locale": "en",
            LTI + "message_type": "LtiDeepLinkingRequest" if deep_linking else "LtiResourceLinkRequest",
            LTI + "version": "1.3.0",
            LTI + "deployment_id": connected.deployment.deployment_id,
            LTI + "target_link_uri": login["target_link_uri"],
            LTI + "roles": [INSTRUCTOR if deep_linking else LEARNER],
            LTI + "context": {
                "id": connected.course.context_id, "title": connected.course.title, "label": "NET-101",
                "type": ["http://purl.imsglobal.org/vocab/lis/v2/course#CourseOffering"],
            },
            LTI + "launch_presentation": {
                "return_url": f"{connected.base_url}/sandbox-lms/return/", "document_target": "iframe", "locale": "en",
            },
            LTI + "tool_platform": {"guid": "sandbox-guid", "name": "Sandbox LMS", "product_family_code": "canvas"},
            LTI + "lis": {"person_sourcedid": "SIS-1", "course_offering_sourcedid": "NET-101-2026"},
            LTI + "custom": {"activity_id": str(self.activity_id), "course_start_date": "2026-01-15 00:00:00 -0700"},
            AGS: {
                "scope": ["https://purl.imsglobal.org/spec/lti-ags/scope/score"],
                "lineitems": f"{connected.base_url}/sandbox-lms/lineitems/",
                "lineitem": connected.seeded.line_item_url,
            },
            NRPS: {"context_memberships_url": f"{connected.base_url}/sandbox-lms/memberships/", "service_versions": ["2.0"]},
            PNS: {
                "platform_notification_service_url": f"{connected.base_url}/sandbox-lms/pns/",
                "notice_types_supported": ["LtiContextCopyNotice"],
            },
        }
        if deep_linking:
            claims[DL] = {
                "deep_link_return_url": f"{connected.base_url}/sandbox-lms/deep-link-return/",
                "accept_types": ["ltiResourceLink"], "accept_presentation_document_targets": ["iframe"],
                "accept_multiple": True, "accept_lineitem": True, "data": "opaque-data",
            }
        else:
            claims[LTI + "resource_link"] = {"id": connected.seeded.resource_link.resource_link_id, "title": "Quiz"}
        return claims

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(claims, self.pem, algorithm="RS256", headers={"kid": self.kid, **headers})

    def launch(self, client: Client, fields: dict[str, Any]):
        return client.post("/lti/launch/", data={k: v for k, v in fields.items() if v is not None})


def _mutated(claims: dict[str, Any], mutations: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    claims = copy.deepcopy(claims)
    for path, value in mutations:
        target = claims
        for step in path[:-1]:
            if not isinstance(target.get(step), dict):
                target[step] = {}
            target = target[step]
        if value is DELETE:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    return claims


KNOWN_PATHS = [
    ("iss",), ("aud",), ("azp",), ("sub",), ("iat",), ("exp",), ("nbf",), ("nonce",), ("given_name",), ("family_name",),
    ("name",), ("email",), ("picture",), ("locale",),
    *[(LTI + name,) for name in (
        "message_type", "version", "deployment_id", "target_link_uri", "roles", "context", "resource_link",
        "launch_presentation", "tool_platform", "lis", "custom", "role_scope_mentor", "lti1p1",
    )],
    (LTI + "roles", "0"),
    (LTI + "context", "id"), (LTI + "context", "title"), (LTI + "context", "label"), (LTI + "context", "type"),
    (LTI + "resource_link", "id"), (LTI + "resource_link", "title"), (LTI + "resource_link", "description"),
    (LTI + "launch_presentation", "return_url"), (LTI + "launch_presentation", "width"),
    (LTI + "tool_platform", "guid"), (LTI + "tool_platform", "url"), (LTI + "tool_platform", "contact_email"),
    (LTI + "tool_platform", "name"), (LTI + "lis", "person_sourcedid"),
    (LTI + "custom", "activity_id"), (LTI + "custom", "placement_id"), (LTI + "custom", "course_start_date"),
    (LTI + "custom", "course_end_date"),
    (AGS,), (AGS, "scope"), (AGS, "lineitem"), (AGS, "lineitems"),
    (NRPS,), (NRPS, "context_memberships_url"),
    (PNS,), (PNS, "platform_notification_service_url"), (PNS, "notice_types_supported"),
    (DL,), (DL, "deep_link_return_url"), (DL, "accept_types"), (DL, "accept_multiple"), (DL, "accept_lineitem"),
    (DL, "data"), (DL, "title"),
]
paths = st.one_of(st.sampled_from(KNOWN_PATHS), st.tuples(strings))


@st.composite
def mutation(draw):
    """(path, value): course dates get date-like strings half the time, every claim any value."""
    path = draw(paths)
    if path[-1].endswith("_date") and draw(st.booleans()):
        return path, draw(lms_dates)
    return path, draw(values)


def _fix_list_paths(mutations):
    """`(roles, "0")` means: replace the first role (a list member, not an object member)."""
    fixed = []
    for path, value in mutations:
        if path == (LTI + "roles", "0"):
            fixed.append(((LTI + "roles",), [value if value is not DELETE else None, LEARNER]))
        else:
            fixed.append((path, value))
    return fixed


REASON = re.compile(r'<div class="error" id="reason">([^<]{0,48})')


def check_outcome(response, before: dict[str, int], *, signed: bool) -> None:
    """The door's promises, whatever came in."""
    reason = REASON.search(response.content.decode("utf-8", "replace"))
    if "lti_errormsg=" in response.get("Location", ""):
        event(f"launch answered {response.status_code}, back to the LMS with an error")
    else:
        event(f"launch answered {response.status_code} {html.unescape(reason.group(1)) if reason else ''}".strip())
    assert response.status_code < 500, response.content[:2000]
    after = row_counts()
    written = {name for name in WATCHED if after[name] != before[name]}
    location = response.get("Location", "")
    text = response.content.decode("utf-8", "replace")
    if response.status_code in (302, 303) and "lti_errormsg=" not in location:
        assert signed, f"an unsigned or forged launch was accepted: {location}"
        return  # accepted: the launch wrote what it is told
    pending = signed and "deployment" in (text + location)
    allowed = PENDING_MAY_WRITE if pending else set()
    assert written <= allowed, f"a refused launch ({response.status_code}) wrote {sorted(written - allowed)}: {text[:300]}"


@pytest.fixture
def door(live_server, two_institutions):
    connected = lms.connect(live_server.url, two_institutions[0])
    the_door = Door(connected, ActivityFactory(slug="fuzz-quiz", title="Fuzz quiz").pk)
    # The control launch: the crafting is right (so each refusal is due to the fuzzing), and the
    # tool fetches the platform's JWKS from live_server once, over HTTP.
    client = Client()
    login = the_door.login(client, the_door.learner)
    response = the_door.launch(client, {"id_token": the_door.sign(the_door.claims(login, deep_linking=False)),
                                        "state": login["state"]})
    assert response.status_code == 302 and "/courseware/play/" in response["Location"], response.content[:500]
    return the_door


@fuzz(0.5)
@given(
    deep_linking=st.booleans(),
    mutations=st.lists(mutation(), min_size=1, max_size=3),
    other_kid=st.integers(0, 7),  # an eighth name a kid of their own, the rest the platform's
    kid=strings,
    new_deployment=st.integers(0, 3),  # a quarter name a deployment the tool has not seen (pending)
)
def test_signed_launches_with_arbitrary_claims(door, deep_linking, mutations, other_kid, kid, new_deployment):
    client = Client()
    login = door.login(client, door.instructor if deep_linking else door.learner)
    claims = door.claims(login, deep_linking=deep_linking)
    if new_deployment == 0:
        claims[LTI + "deployment_id"] = f"fuzz-{uuid.uuid4().hex}"
    claims = _mutated(claims, _fix_list_paths(mutations))
    headers = {"kid": kid} if other_kid == 0 else {}
    try:
        token = door.sign(claims, **headers)
    except (TypeError, ValueError):
        return  # not even JSON-serialisable: no LMS could send it
    before = row_counts()
    response = door.launch(client, {"id_token": token, "state": login["state"]})
    check_outcome(response, before, signed=True)


FORGER = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)


@fuzz(0.25)
@given(
    how=st.sampled_from(["forged", "none", "hs256", "garbage", "tampered", "no_state", "wrong_state", "other_fields"]),
    mutations=st.lists(mutation(), max_size=3),
    junk=wire_strings,
    fields=st.dictionaries(st.sampled_from(["id_token", "state", "lti_storage_target", "utf8"]) | wire_strings, wire_strings, max_size=3),
)
def test_unsigned_forged_and_garbled_launches_write_nothing(door, how, mutations, junk, fields):
    client = Client()
    login = door.login(client, door.learner)
    claims = _mutated(door.claims(login, deep_linking=False), _fix_list_paths(mutations))
    try:
        token = {
            "forged": lambda: jwt.encode(claims, FORGER, algorithm="RS256", headers={"kid": door.kid}),
            "none": lambda: jwt.encode(claims, None, algorithm="none", headers={"kid": door.kid}),
            "hs256": lambda: jwt.encode(claims, "the-platform-public-key-as-secret", algorithm="HS256", headers={"kid": door.kid}),
            "garbage": lambda: junk,
            "tampered": lambda: door.sign(claims)[:-8] + "AAAAAAAA",
        }.get(how, lambda: door.sign(claims))()
    except (TypeError, ValueError):
        return
    form = {"id_token": token, "state": login["state"]}
    if how == "no_state":
        form["state"] = None
    elif how == "wrong_state":
        form["state"] = junk
    elif how == "other_fields":
        form = {**fields}
    before = row_counts()
    response = door.launch(client, form)
    check_outcome(response, before, signed=False)
    assert response.status_code >= 400 or "lti_errormsg=" in response.get("Location", "")


LOGIN_PARAMS = ["iss", "login_hint", "target_link_uri", "lti_message_hint", "client_id", "lti_deployment_id",
                "lti1p3_new_window", "lti_storage_target"]


@fuzz(0.25)
@given(
    method=st.sampled_from(["GET", "POST"]),
    changes=st.dictionaries(st.sampled_from(LOGIN_PARAMS) | wire_strings, st.one_of(wire_strings, st.none()), max_size=4),
    registration=st.sampled_from(["ours", "unknown", "junk"]),
)
def test_arbitrary_logins_never_crash_and_write_nothing(door, method, changes, registration):
    params = {**door.learner.params}
    for name, value in changes.items():
        if value is None:
            params.pop(name, None)
        else:
            params[name] = value
    path = {
        "ours": door.login_path,
        "unknown": "/lti/login/00000000-0000-4000-8000-000000000000/",
        "junk": door.login_path.rstrip("/") + "x/",
    }[registration]
    client = Client()
    before = row_counts()
    response = client.get(path, params) if method == "GET" else client.post(path, params)
    event(f"login answered {response.status_code}")
    assert response.status_code < 500, response.content[:2000]
    after = row_counts()
    assert after == before, {k: (before[k], after[k]) for k in after if after[k] != before[k]}
