"""The platform's side of Dynamic Registration as the tool sees it: its openid configuration
(fetched and checked before anything is posted) and the answer to our registration POST.

Everything here came from the network: bounded in size and time, checked for type and shape, and
refused with a reason an LMS admin can act on. No token appears in a reason.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from ..models import LmsFamily
from ..tool_configuration import endpoint_refusal, normalised_issuer

TIMEOUT_SECONDS = 10
MAX_BYTES = 256 * 1024
MAX_URL_LENGTH = 2000
MAX_SUMMARY_BYTES = 64 * 1024
PLATFORM_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-platform-configuration"
TOOL_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-tool-configuration"
NOTICE_HANDLERS_SCOPE = "https://purl.imsglobal.org/spec/lti/scope/noticehandlers"
REQUIRED_ENDPOINTS = ("registration_endpoint", "authorization_endpoint", "token_endpoint", "jwks_uri")

# product_family_code as each LMS sends it → our LMS family.
PRODUCT_FAMILIES = {
    "moodle": LmsFamily.MOODLE,
    "canvas": LmsFamily.CANVAS,
    "desire2learn": LmsFamily.D2L,
    "d2l": LmsFamily.D2L,
    "brightspace": LmsFamily.D2L,
    "sakai": LmsFamily.SAKAI,
    "blackboard": LmsFamily.BLACKBOARD,
    "blackboardlearn": LmsFamily.BLACKBOARD,
    "schoology": LmsFamily.SCHOOLOGY,
}
_SESSION = requests.Session()
_SESSION.headers["User-Agent"] = "courseware-grade-sync dynamic-registration"


class PlatformRefused(Exception):
    """The platform's configuration or answer cannot be used: `reason` says what, for the LMS admin."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class OpenIdConfiguration:
    url: str
    issuer: str
    registration_endpoint: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    audience: str
    scopes_supported: list[str]
    platform: dict[str, Any]  # the lti-platform-configuration part: product, version, messages, variables

    @property
    def product_family_code(self) -> str:
        code = self.platform.get("product_family_code")
        return code if isinstance(code, str) else ""

    @property
    def lms_family(self) -> str:
        return PRODUCT_FAMILIES.get(self.product_family_code.lower().replace(" ", ""), LmsFamily.OTHER)

    @property
    def offers_notices(self) -> bool:
        return NOTICE_HANDLERS_SCOPE in self.scopes_supported


def site_of(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the default port filled in: "the same site" for two URLs."""
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def checked_url(value: object, *, what: str) -> str:
    """A platform URL we may send keys and tokens to (https, or loopback in a sandbox), or a refusal."""
    if not isinstance(value, str) or not value.strip():
        raise PlatformRefused(f"The platform's configuration has no {what}.")
    value = value.strip()
    if len(value) > MAX_URL_LENGTH:
        raise PlatformRefused(f"The platform's {what} is longer than {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise PlatformRefused(f"The platform's {what} is not a URL.") from None
    if not parts.hostname or parts.username or parts.password:
        raise PlatformRefused(f"The platform's {what} is not a usable URL (no host, or credentials in it).")
    refusal = endpoint_refusal(value)
    if refusal:
        raise PlatformRefused(f"The platform's {what} ({_shown(value)}) is refused: {refusal}")
    return value


def _shown(url: str) -> str:
    """A URL as a refusal may show it: without its query, where a platform may put a token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def read_json(response: requests.Response, *, what: str) -> Any:
    """The body as JSON, at most MAX_BYTES, or a refusal."""
    body = b""
    for chunk in response.iter_content(chunk_size=16384):
        body += chunk
        if len(body) > MAX_BYTES:
            raise PlatformRefused(f"The platform's {what} is larger than {MAX_BYTES // 1024} KB: not an LTI answer.")
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PlatformRefused(f"The platform's {what} is not JSON (HTTP {response.status_code}).") from None


# Every Instructure-hosted Canvas (and, by default, a self-hosted one) signs as one of these issuers while
# serving its configuration from the school's own host: the one exception to "issuer on the URL's host".
SHARED_CANVAS_ISSUERS = {
    "https://canvas.instructure.com", "https://canvas.beta.instructure.com", "https://canvas.test.instructure.com",
}


def _shared_canvas_issuer(issuer: str, platform: dict[str, Any]) -> bool:
    return issuer in SHARED_CANVAS_ISSUERS and platform.get("product_family_code") == "canvas"


def fetch_openid_configuration(url: object) -> OpenIdConfiguration:
    """GET the platform's openid configuration and check it (spec §3.5): an issuer on the URL's own host,
    a registration endpoint on the URL's own site, https endpoints, the LTI platform configuration."""
    if not isinstance(url, str) or not url:
        raise PlatformRefused(
            "The LMS did not send its openid_configuration: start the registration from the LMS's "
            "tool registration page (paste the link there), not in a browser tab."
        )
    url = checked_url(url, what="openid configuration URL")
    try:
        response = _SESSION.get(
            url, timeout=TIMEOUT_SECONDS, stream=True, allow_redirects=False, headers={"Accept": "application/json"}
        )
    except requests.RequestException as error:
        raise PlatformRefused(
            f"Could not fetch the platform's configuration from {_shown(url)} ({type(error).__name__}). "
            "Check that the LMS is reachable from the internet."
        ) from None
    with response:
        if response.status_code != 200:
            raise PlatformRefused(
                f"The platform answered HTTP {response.status_code} for its configuration at {_shown(url)}."
            )
        document = read_json(response, what="openid configuration")
    if not isinstance(document, dict):
        raise PlatformRefused("The platform's openid configuration is not a JSON object.")

    issuer = document.get("issuer")
    if not isinstance(issuer, str) or not issuer.strip() or len(issuer) > 255:
        raise PlatformRefused("The platform's openid configuration has no issuer (or one longer than 255 characters).")
    issuer = normalised_issuer(issuer)
    checked_url(issuer, what="issuer")
    platform = document.get(PLATFORM_CONFIGURATION)
    if not isinstance(platform, dict) or not isinstance(platform.get("product_family_code"), str):
        raise PlatformRefused(
            "The platform's configuration lacks its LTI platform configuration (product_family_code): "
            "is this an LTI Dynamic Registration endpoint?"
        )
    if (urlsplit(issuer).hostname or "").lower() != site_of(url)[1] and not _shared_canvas_issuer(issuer, platform):
        raise PlatformRefused(
            f"The platform's configuration at {_shown(url)} names the issuer {issuer}, on another host. "
            "A platform's issuer must be on the host its configuration comes from."
        )
    endpoints = {name: checked_url(document.get(name), what=name.replace("_", " ")) for name in REQUIRED_ENDPOINTS}
    if site_of(endpoints["registration_endpoint"]) != site_of(url):
        raise PlatformRefused(
            f"The platform's registration endpoint ({_shown(endpoints['registration_endpoint'])}) is not on the site "
            f"its configuration came from ({_shown(url)}): the registration token is sent only there."
        )
    scopes = document.get("scopes_supported", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise PlatformRefused("The platform's scopes_supported is not a list of scopes.")
    audience = document.get("authorization_server", "")
    return OpenIdConfiguration(
        url=url,
        issuer=issuer,
        registration_endpoint=endpoints["registration_endpoint"],
        authorization_endpoint=endpoints["authorization_endpoint"],
        token_endpoint=endpoints["token_endpoint"],
        jwks_uri=endpoints["jwks_uri"],
        audience=audience if isinstance(audience, str) and len(audience) <= 255 else "",
        scopes_supported=scopes,
        platform=_platform_summary(platform),
    )


def _platform_summary(platform: dict[str, Any]) -> dict[str, Any]:
    """What we keep of what the platform said of itself: product, version, messages, variables (no secrets)."""
    keep = ("product_family_code", "version", "messages_supported", "variables")
    summary = {name: platform[name] for name in keep if name in platform}
    if len(json.dumps(summary)) > MAX_SUMMARY_BYTES:  # a platform listing thousands of variables: product and version only
        summary = {name: summary[name] for name in ("product_family_code", "version") if name in summary}
    return summary


@dataclass(frozen=True)
class PlatformAnswer:
    client_id: str
    deployment_id: str  # "" when the platform sends none (it comes with the first launch then)


def post_registration(configuration: OpenIdConfiguration, *, client_configuration: dict[str, Any],
                      registration_token: str) -> PlatformAnswer:
    """POST our client configuration to the registration endpoint (Bearer: the LMS's registration token)."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if registration_token:
        headers["Authorization"] = f"Bearer {registration_token}"
    try:
        response = _SESSION.post(
            configuration.registration_endpoint, data=json.dumps(client_configuration), headers=headers,
            timeout=TIMEOUT_SECONDS, stream=True, allow_redirects=False,
        )
    except requests.RequestException as error:
        raise PlatformRefused(
            f"Could not reach the platform's registration endpoint ({type(error).__name__}); nothing was registered."
        ) from None
    with response:
        if response.status_code not in (200, 201):
            raise PlatformRefused(
                f"The platform refused the registration: HTTP {response.status_code}{_platform_error(response)}. "
                "Nothing was registered; start again from the LMS (a registration token is often single-use)."
            )
        answer = read_json(response, what="answer to the registration")
    if not isinstance(answer, dict):
        raise PlatformRefused("The platform's answer to the registration is not a JSON object.")
    client_id = answer.get("client_id")
    if not isinstance(client_id, str) or not client_id.strip() or len(client_id) > 255 or any(
        c.isspace() or ord(c) < 32 for c in client_id.strip()
    ):
        raise PlatformRefused("The platform accepted the registration but sent no usable client_id; nothing was saved.")
    tool = answer.get(TOOL_CONFIGURATION)
    deployment_id = tool.get("deployment_id", "") if isinstance(tool, dict) else ""
    if deployment_id is None:
        deployment_id = ""
    if isinstance(deployment_id, int) and not isinstance(deployment_id, bool):
        deployment_id = str(deployment_id)  # Moodle's is its tool type id
    if not isinstance(deployment_id, str) or len(deployment_id) > 255 or any(ord(c) < 32 for c in deployment_id):
        raise PlatformRefused("The platform's answer has an unusable deployment_id; nothing was saved.")
    return PlatformAnswer(client_id=client_id.strip(), deployment_id=deployment_id.strip())


def _platform_error(response: requests.Response) -> str:
    """The platform's own words (OAuth error / error_description), short and as plain text, or nothing."""
    try:
        body = read_json(response, what="refusal")
    except PlatformRefused:
        return f" {response.reason}" if response.reason else ""
    if not isinstance(body, dict):
        return ""
    words = [str(body.get(name))[:200] for name in ("error", "error_description") if isinstance(body.get(name), str)]
    return f" ({': '.join(words)})" if words else ""
