"""The AGS client: OAuth2 tokens shared by all workers, scores and line items over one pooled Session.

Tokens: client credentials with a signed JWT assertion (Security Framework §4.1), cached per
(registration, scopes) in the shared cache with an expiry margin. A cache lock lets one process
fetch while the others wait, so a cold start of many workers asks the LMS for one token.
"""
from __future__ import annotations

import datetime
import hashlib
import http
import json
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
import requests
import urllib3
from django.conf import settings
from django.core.cache import cache
from lti_tool.models import LtiRegistration
from requests.adapters import HTTPAdapter

from institutions.keys import tool_signing_key
from institutions.redaction import redact

from . import counters

SCORE_SCOPE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
LINEITEM_READ_SCOPE = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly"
RESULT_READ_SCOPE = "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly"
RESULT_CONTAINER_TYPE = "application/vnd.ims.lis.v2.resultcontainer+json"
SCORE_CONTENT_TYPE = "application/vnd.ims.lis.v1.score+json"
LINEITEM_CONTAINER_TYPE = "application/vnd.ims.lis.v2.lineitemcontainer+json"
TOKEN_EXPIRY_MARGIN_SECONDS = 120
ASSERTION_LIFETIME_SECONDS = 300
TOKEN_LOCK_SECONDS = 15
# Each worker process remembers a token briefly, so a grade costs no cache round trip for it; a
# token the LMS rejects is replaced at once (see `rejected`), and the memo never outlives the cache.
TOKEN_MEMO_SECONDS = 60
_token_memo: dict[str, tuple[str, float]] = {}
USER_AGENT = "CoursewareGradeSync/1.0 (+LTI 1.3 AGS)"

_local = threading.local()
_session_lock = threading.Lock()
_session: requests.Session | None = None


class AgsError(Exception):
    """No HTTP answer at all (timeout, connection refused or dropped)."""


class TokenError(Exception):
    """The LMS's token endpoint (or a line item query) refused or answered nonsense."""

    def __init__(self, message: str, status_code: int | None = None, body: str = "", headers: dict | None = None) -> None:
        # What an LMS answers here is kept and shown to support: a token in a malformed answer must not be.
        super().__init__(redact(message))
        self.status_code = status_code
        self.body = redact(body)
        self.headers = headers or {}


def http_session() -> requests.Session:
    """One pooled Session per worker process, sized for the thread pool (urllib3 is thread-safe here)."""
    global _session
    if _session is None:
        with _session_lock:
            if _session is None:
                session = requests.Session()
                adapter = HTTPAdapter(pool_connections=32, pool_maxsize=settings.AGS_HTTP_POOL_SIZE, max_retries=0)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                session.headers["User-Agent"] = USER_AGENT
                # Without a proxy in the environment, skip requests' per-request look at it and at
                # ~/.netrc (a stat of the home directory per grade: 8 % of a busy sender's time).
                session.trust_env = bool(urllib.request.getproxies())
                _session = session
    return _session


def timeouts() -> tuple[float, float]:
    return (settings.AGS_CONNECT_TIMEOUT_SECONDS, settings.AGS_READ_TIMEOUT_SECONDS)


# --- Tokens -------------------------------------------------------------------------------------


def _token_cache_key(registration: LtiRegistration, scopes: tuple[str, ...]) -> str:
    digest = hashlib.sha1(" ".join(sorted(scopes)).encode()).hexdigest()[:16]
    return f"ags-token:{registration.pk}:{digest}"


def build_client_assertion(registration: LtiRegistration, deployment_id: str) -> str:
    now = int(time.time())
    claims = {
        "iss": registration.client_id,
        "sub": registration.client_id,
        "aud": registration.audience or registration.token_url,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_SECONDS,
        "jti": uuid.uuid4().hex,
        "https://purl.imsglobal.org/spec/lti/claim/deployment_id": deployment_id,
    }
    private_key, kid = tool_signing_key(registration)
    return jwt.encode(claims, private_key, algorithm="RS256", headers={"kid": kid})


def _fetch_token(registration: LtiRegistration, scopes: tuple[str, ...], deployment_id: str) -> tuple[str, int]:
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": build_client_assertion(registration, deployment_id),
        "scope": " ".join(scopes),
    }
    try:
        response = http_session().post(registration.token_url, data=data, timeout=timeouts())
    except requests.RequestException as error:
        counters.count("token_requests", code="none")
        raise AgsError(f"token endpoint unreachable: {error}") from error
    counters.count("token_requests", code=response.status_code)
    try:
        # Moodle answers with a text/html content type: parse the body as JSON whatever it says.
        body = json.loads(response.text)
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or not body.get("access_token"):
        raise TokenError(
            f"token endpoint answered {response.status_code}: {response.text[:300]}",
            response.status_code, response.text[:2000], dict(response.headers),
        )
    return body["access_token"], int(body.get("expires_in") or 3600)


def access_token(
    registration: LtiRegistration, scopes: tuple[str, ...], *, deployment_id: str, rejected: str | None = None
) -> str:
    """A valid token for the scopes, shared by every worker.

    `rejected`: a token the LMS just answered 401 to. A new one is fetched only if the cache still
    holds that one (another worker may already have replaced it).
    """
    key = _token_cache_key(registration, scopes)
    memo = _token_memo.get(key)
    if memo and memo[0] != rejected and memo[1] > time.monotonic():
        return memo[0]
    token = _shared_token(registration, scopes, key, deployment_id, rejected)
    _token_memo[key] = (token, time.monotonic() + TOKEN_MEMO_SECONDS)
    return token


def forget_tokens() -> None:
    """Drop this process's memo of tokens (the shared cache keeps them)."""
    _token_memo.clear()


def _shared_token(registration: LtiRegistration, scopes: tuple[str, ...], key: str, deployment_id: str,
                  rejected: str | None) -> str:
    deadline = time.monotonic() + TOKEN_LOCK_SECONDS
    while True:
        cached = cache.get(key)
        if cached and cached != rejected:
            return cached
        if cache.add(f"{key}:lock", 1, TOKEN_LOCK_SECONDS):
            try:
                cached = cache.get(key)
                if cached and cached != rejected:
                    return cached
                token, expires_in = _fetch_token(registration, scopes, deployment_id)
                cache.set(key, token, max(expires_in - TOKEN_EXPIRY_MARGIN_SECONDS, 30))
                return token
            finally:
                cache.delete(f"{key}:lock")
        if time.monotonic() > deadline:
            token, expires_in = _fetch_token(registration, scopes, deployment_id)
            cache.set(key, token, max(expires_in - TOKEN_EXPIRY_MARGIN_SECONDS, 30))
            return token
        time.sleep(0.02)


# --- Scores and line items ----------------------------------------------------------------------


def _service_url(line_item_url: str, service: str) -> str:
    parts = urlsplit(line_item_url)
    return urlunsplit((parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{service}", parts.query, parts.fragment))


def scores_url(line_item_url: str) -> str:
    """`{line item}/scores`, keeping the line item's query string (Moodle's `?type_id=`)."""
    return _service_url(line_item_url, "scores")


def results_url(line_item_url: str) -> str:
    """`{line item}/results`, keeping the line item's query string."""
    return _service_url(line_item_url, "results")


def score_timestamp(moment: datetime.datetime) -> str:
    """ISO 8601 with microseconds and a timezone, as AGS requires."""
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="microseconds")


_SILENT_BODIES = {"", "[]", "{}", "null", '""'}


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: str
    headers: dict[str, str]
    duration_ms: int
    reason: str = ""  # the HTTP status line's phrase: Moodle's only words on a refusal

    @property
    def said(self) -> str:
        """What the LMS said, in its words, for support and for the answer tables.

        Moodle refuses with its reason only in the status line and a body of `[]`: then the status
        line is the message ("400 Incorrect score received"). A reason phrase of the LMS's own
        (not the standard one for the code) is kept in front of a body too."""
        body = (self.body or "").strip()
        reason = (self.reason or "").strip()
        status_line = f"{self.status_code} {reason}".strip()
        if body in _SILENT_BODIES:
            return status_line
        if reason and reason.lower() != _standard_phrase(self.status_code).lower():
            return f"{status_line} — {body}"
        return body


def _standard_phrase(status_code: int) -> str:
    try:
        return http.HTTPStatus(status_code).phrase
    except ValueError:
        return ""


def post_score(*, line_item_url: str, token: str, payload: dict[str, Any]) -> Answer:
    """POST one score. Every grade passes here, so without a proxy to route through it goes straight
    to the session's urllib3 pool (same kept-alive connections): requests' per-call work — merging
    settings, guessing the answer's charset — cost more CPU than the request itself."""
    started = time.monotonic()
    url = scores_url(line_item_url)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": SCORE_CONTENT_TYPE}
    session = http_session()
    if session.trust_env:
        try:
            response = session.post(url, data=json.dumps(payload), headers=headers, timeout=timeouts())
        except requests.RequestException as error:
            raise AgsError(f"{type(error).__name__}: {error}") from error
        return Answer(
            response.status_code, response.text[:2000], dict(response.headers),
            int((time.monotonic() - started) * 1000), response.reason or "",
        )
    connect, read = timeouts()
    try:
        response = session.get_adapter(url).poolmanager.urlopen(
            "POST", url, body=json.dumps(payload).encode(), headers={**session.headers, **headers},
            timeout=urllib3.Timeout(connect=connect, read=read), retries=False, redirect=False,
        )
    except (urllib3.exceptions.HTTPError, requests.RequestException, ValueError) as error:
        raise AgsError(f"{type(error).__name__}: {error}") from error
    return Answer(
        response.status, response.data[:8000].decode("utf-8", "replace")[:2000], dict(response.headers),
        int((time.monotonic() - started) * 1000), response.reason or "",
    )


def read_result(*, line_item_url: str, token: str, user_id: str) -> float | None:
    """The fraction (resultScore / resultMaximum) the LMS holds for one learner on a line item, or None.

    Raises AgsError or TokenError when the LMS does not answer or refuses (no results scope)."""
    try:
        response = http_session().get(
            results_url(line_item_url),
            params={"user_id": user_id},
            headers={"Authorization": f"Bearer {token}", "Accept": RESULT_CONTAINER_TYPE},
            timeout=timeouts(),
        )
    except requests.RequestException as error:
        raise AgsError(f"{type(error).__name__}: {error}") from error
    if response.status_code != 200:
        raise TokenError(f"results answered {response.status_code}: {response.text[:300]}", response.status_code,
                         response.text[:2000], dict(response.headers))
    try:
        rows = [row for row in response.json() if row.get("userId") == user_id]
        score, maximum = rows[0].get("resultScore"), rows[0].get("resultMaximum") or 1
        return None if score is None else float(score) / float(maximum)
    except (ValueError, TypeError, AttributeError, IndexError, ZeroDivisionError):
        return None


def find_line_items(*, lineitems_url: str, token: str, **filters: str) -> list[dict[str, Any]]:
    """Line items of a course matching the filters, following `Link: rel="next"` pagination."""
    items: list[dict[str, Any]] = []
    url: str | None = lineitems_url
    params: dict[str, str] | None = {k: v for k, v in filters.items() if v}
    pages = 0
    while url and pages < 50:
        try:
            response = http_session().get(
                url,
                params=params,
                headers={"Authorization": f"Bearer {token}", "Accept": LINEITEM_CONTAINER_TYPE},
                timeout=timeouts(),
            )
        except requests.RequestException as error:
            raise AgsError(f"{type(error).__name__}: {error}") from error
        if response.status_code != 200:
            raise TokenError(
                f"line items answered {response.status_code}: {response.text[:300]}",
                response.status_code, response.text[:2000], dict(response.headers),
            )
        page = response.json()
        items.extend(page if isinstance(page, list) else [])
        url = response.links.get("next", {}).get("url")
        params = None  # the next link carries its own query
        pages += 1
    return items
