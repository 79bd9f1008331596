"""Wiring the sandbox LMS to the tool for tests, as an LMS admin and our integration team would.

`connect(...)` seeds a sandbox platform served by live_server and registers it with the tool
(registration, LMS profile, deployment owned by an institution). Everything after goes over HTTP.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from lti_tool.models import Key, LtiDeployment, LtiRegistration

from institutions.models import DeploymentOwnership, Institution, RegistrationProfile
from institutions.tool_configuration import custom_parameters, tool_urls
from sandbox_lms import api


@dataclass
class Connected:
    seeded: api.Seeded
    registration: LtiRegistration
    deployment: LtiDeployment
    institution: Institution
    base_url: str

    @property
    def instructor(self):
        return self.seeded.instructor

    @property
    def students(self):
        return self.seeded.students

    @property
    def course(self):
        return self.seeded.course


def connect(
    base_url: str,
    institution: Institution,
    *,
    profile: str = "canvas",
    active: bool = True,
    owned: bool = True,
    lms_url: str | None = None,
    **seed: Any,
) -> Connected:
    """`lms_url`: where the sandbox LMS is served, when not beside the tool at `base_url` (the multi-host drill)."""
    Key.objects.filter(is_active=True).exists() or Key.objects.generate()
    client_id = f"tool-{uuid.uuid4().hex[:8]}"
    deployment_id = f"dep-{uuid.uuid4().hex[:8]}"
    registration = LtiRegistration(name=f"Sandbox {profile}", client_id=client_id, uuid=uuid.uuid4())
    urls = tool_urls(base_url, registration)
    seeded = api.seed_platform(
        base_url=f"{lms_url or base_url}/sandbox-lms",
        client_id=client_id,
        deployment_id=deployment_id,
        login_url=urls["login"],
        launch_url=urls["launch"],
        deep_linking_url=urls["deep_linking"],
        jwks_url=urls["jwks"],
        profile=profile,
        custom=seed.pop("custom", custom_parameters(profile)),
        **seed,
    )
    registration.issuer = seeded.platform.issuer
    registration.auth_url = seeded.auth_url
    registration.token_url = seeded.token_url
    registration.keyset_url = seeded.jwks_url
    registration.save()
    RegistrationProfile.objects.create(registration=registration, lms_family=profile if profile != "generic" else "other")
    deployment = LtiDeployment.objects.create(registration=registration, deployment_id=deployment_id, is_active=active)
    if owned:
        DeploymentOwnership.objects.create(deployment=deployment, institution=institution)
    return Connected(seeded, registration, deployment, institution, base_url)


def browser() -> requests.Session:
    http = requests.Session()
    http.headers["User-Agent"] = "tests (a browser in an LMS frame)"
    return http


def launch(http: requests.Session, *, user, resource_link=None, course=None, **kwargs) -> requests.Response:
    """A launch as the LMS starts it and a browser follows it, ending on the tool's page."""
    initiation = api.start_launch(user=user, resource_link=resource_link, course=course, **kwargs)
    return api.follow_launch(http, initiation)


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def deep_link(http: requests.Session, connected: Connected, picks: dict[int, dict[str, Any]], **settings: Any) -> requests.Response:
    """The instructor picks activities in the tool's picker; returns the sandbox's answer to the response."""
    picker = api.follow_launch(http, api.start_deep_linking(user=connected.instructor, course=connected.course, **settings))
    assert picker.status_code == 200, picker.text[:500]
    form: dict[str, Any] = {"csrfmiddlewaretoken": csrf_token(picker.text), "activity": list(picks)}
    for activity_id, choice in picks.items():
        if choice.get("graded"):
            form[f"graded-{activity_id}"] = "on"
            form[f"points-{activity_id}"] = str(choice.get("points", ""))
    returned = http.post(picker.url, data=form, headers={"Referer": picker.url}, timeout=10)
    if 'id="deep-link-return"' not in returned.text:
        return returned
    action, fields = api.parse_autopost(returned.text)
    return http.post(action, data=fields, timeout=10)


def login_for_crafted_token(http: requests.Session, connected: Connected, user) -> dict[str, str]:
    """Do the tool's login initiation only: returns the state, nonce and redirect_uri it asked for."""
    initiation = api.start_launch(user=user, resource_link=connected.seeded.resource_link)
    response = http.post(initiation.url, data=initiation.params, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text[:300]
    query = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}
    return query
