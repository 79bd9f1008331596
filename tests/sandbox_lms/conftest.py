"""Sandbox LMS fixtures: a seeded platform served by live_server, a pylti1p3 tool beside it,
and a small service client that signs its own client assertions."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from typing import Any

import jwt
import pytest
import requests

from sandbox_lms import api

from . import pytool


@pytest.fixture(autouse=True)
def _fresh_sandbox_caches():
    api.forget_caches()
    api.reset_rate_limits()
    yield
    api.forget_caches()
    api.reset_rate_limits()


@pytest.fixture
def make_sandbox(live_server, settings):
    """make_sandbox(profile="canvas") → api.Seeded, registered with the pylti1p3 tool at /pytool/."""
    settings.ROOT_URLCONF = "tests.sandbox_lms.pytool"

    def make(profile: str = api.Profile.GENERIC, **kwargs: Any) -> api.Seeded:
        base = live_server.url
        seeded = api.seed_platform(
            base_url=f"{base}/sandbox-lms",
            login_url=f"{base}/pytool/login/",
            launch_url=f"{base}/pytool/launch/",
            jwks_url=f"{base}/pytool/jwks/",
            profile=profile,
            **kwargs,
        )
        pytool.configure(
            issuer=seeded.platform.issuer, client_id=seeded.registration.client_id, auth_url=seeded.auth_url,
            token_url=seeded.token_url, jwks_url=seeded.jwks_url, deployment_id=seeded.deployment.deployment_id,
        )
        return seeded

    return make


@pytest.fixture
def sandbox(make_sandbox) -> api.Seeded:
    return make_sandbox()


def now_iso(offset: float = 0.0) -> str:
    return datetime.fromtimestamp(time.time() + offset, tz=timezone.utc).isoformat(timespec="microseconds")


class ServiceClient:
    """Calls the sandbox's token and AGS endpoints like a tool would."""

    def __init__(self, seeded: api.Seeded) -> None:
        self.seeded = seeded
        self.http = requests.Session()
        self.http.headers["User-Agent"] = "sandbox-tests"
        self._token: str | None = None

    def assertion(self, **overrides: Any) -> str:
        client_id = self.seeded.registration.client_id
        now = int(time.time())
        claims = {
            "iss": client_id, "sub": client_id, "aud": self.seeded.token_url, "iat": now, "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        kid = pytool.TOOL.conf.get_jwks(pytool.TOOL.issuer, pytool.TOOL.client_id)["keys"][0]["kid"]
        return jwt.encode(claims, pytool.PRIVATE_PEM, algorithm="RS256", headers={"kid": kid})

    def request_token(self, scopes: list[str] | None = None, assertion: str | None = None) -> requests.Response:
        return self.http.post(self.seeded.token_url, data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion or self.assertion(),
            "scope": " ".join(scopes or api.SUPPORTED_SCOPES),
        }, timeout=10)

    @property
    def token(self) -> str:
        if self._token is None:
            response = self.request_token()
            assert response.status_code == 200, response.text
            self._token = response.json()["access_token"]
        return self._token

    def call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 10)
        return self.http.request(method, url, headers=headers, **kwargs)

    def post_score(self, user: api.SandboxUser, *, line_item_url: str | None = None, **fields: Any) -> requests.Response:
        score = {
            "userId": user.sub, "scoreGiven": 8, "scoreMaximum": 10, "activityProgress": "Completed",
            "gradingProgress": "FullyGraded", "timestamp": now_iso(),
        }
        score.update(fields)
        score = {k: v for k, v in score.items() if v is not None}
        url = line_item_url or self.seeded.line_item_url
        path, _, query = url.partition("?")
        return self.call(
            "POST", f"{path}/scores" + (f"?{query}" if query else ""), json=score,
            headers={"Content-Type": api.SCORE_MEDIA_TYPE},
        )


@pytest.fixture
def client_for():
    return ServiceClient
