"""The OIDC login initiation (third-party initiated login, LTI 1.3 Core §4.1): its checks, and
what it remembers with the state for the launch to compare (`asked_at_login`).

The LMS's login request is unsigned and anyone can send it: every parameter we use is checked
(one value, decodable, bounded, no control characters) before pylti1p3 sees it, and pylti1p3
reads only the checked values, so nothing unchecked is copied into the redirect to the LMS.
The hints are bounded as they appear in that redirect's Location header (URL-encoded), so a
proxy with default header buffers never sees an oversized header.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote_plus

from django.http import HttpRequest, HttpResponse, QueryDict
from lti_tool.models import LtiRegistration
from lti_tool.utils import DjangoToolConfig
from pylti1p3.contrib.django import DjangoCacheDataStorage, DjangoOIDCLogin
from pylti1p3.contrib.django.request import DjangoRequest
from pylti1p3.contrib.django.session import DjangoSessionService
from pylti1p3.exception import LtiException, OIDCException
from pylti1p3.message_launch import MessageLaunch

from institutions.tool_configuration import is_draft

from .refusals import LaunchRefused, has_unsafe_characters, is_http_url, shown

MAX_HINT_BYTES = 2048  # lti_message_hint, login_hint: URL-encoded, as copied into the redirect
MAX_TARGET_LINK_URI = 2048
MAX_ID = 255  # iss, client_id, lti_deployment_id: the registration's and deployment's columns
# The state cookie lives 5 minutes (pylti1p3); what the login remembers need not outlive it by much.
LOGIN_DATA_SECONDS = 600
PARAMETERS = ("iss", "login_hint", "target_link_uri", "lti_message_hint", "client_id", "lti_deployment_id")
REQUIRED = ("iss", "login_hint", "target_link_uri")


def login_parameters(query: QueryDict) -> dict[str, str]:
    """The login request's parameters we use, each checked; anything wrong is a refusal naming it."""
    checked: dict[str, str] = {}
    for name in PARAMETERS:
        values = query.getlist(name)
        if len(values) > 1:
            raise LaunchRefused(f"The LMS's login request carries {len(values)} values of {name}; it must send one.")
        value = values[0] if values else ""
        if not value:
            if name in REQUIRED:
                raise LaunchRefused(f"The LMS's login request has no {name} (or it is empty).")
            continue
        if "\ufffd" in value:
            raise LaunchRefused(f"The LMS's login request is not valid UTF-8: its {name} could not be decoded.")
        if has_unsafe_characters(value):
            raise LaunchRefused(f"The LMS's login request has control characters in its {name}.")
        if name in ("login_hint", "lti_message_hint"):
            size = len(quote_plus(value))
            if size > MAX_HINT_BYTES:
                raise LaunchRefused(
                    f"The LMS's login request has a {name} of {size} bytes (URL-encoded); this tool accepts at most "
                    f"{MAX_HINT_BYTES}. Ask your LMS administrator to check the tool's configuration."
                )
        elif name == "target_link_uri":
            if len(value) > MAX_TARGET_LINK_URI or not is_http_url(value):
                raise LaunchRefused(
                    f"The LMS's login request has a target_link_uri that is not a web address of at most "
                    f"{MAX_TARGET_LINK_URI} characters."
                )
        elif len(value) > MAX_ID:
            raise LaunchRefused(f"The LMS's login request has a {name} longer than {MAX_ID} characters.")
        checked[name] = value
    return checked


def _registration(registration_uuid: Any, parameters: dict[str, str]) -> LtiRegistration:
    registration = LtiRegistration.objects.filter(uuid=registration_uuid).first()
    if registration is not None and is_draft(registration):
        raise LaunchRefused(
            "This registration is not finished: its client ID has not been entered yet. The LMS administrator "
            "gives the client ID the LMS issued to the tool's integration team, who enter it; then launches work.",
            status=409,
        )
    if registration is None or not registration.is_active:
        raise LaunchRefused(
            "This login address is not one of this tool's LMS registrations (or the registration is switched off). "
            "Ask your LMS administrator to check the tool's login URL.",
            status=404,
        )
    if parameters["iss"] != registration.issuer:
        raise LaunchRefused(
            f"This login address is registered for another LMS than the issuer {shown(parameters['iss'])}. "
            "Ask your LMS administrator to check the tool's login URL.",
        )
    if parameters.get("client_id", registration.client_id) != registration.client_id:
        raise LaunchRefused(
            f"The login request's client_id {shown(parameters['client_id'])} is not the one registered for this "
            "login address. Ask your LMS administrator to check the tool's client id and login URL.",
        )
    return registration


class _CheckedRequest(DjangoRequest):
    """The request as pylti1p3 sees it: only the checked parameters."""

    def __init__(self, request: HttpRequest, parameters: dict[str, str]) -> None:
        super().__init__(request)
        self._parameters = parameters

    def get_param(self, key: str) -> str | None:
        return self._parameters.get(key)


class _LoginSession(DjangoSessionService):
    _launch_data_lifetime = LOGIN_DATA_SECONDS


class _Login(DjangoOIDCLogin):
    """pylti1p3's login, remembering with the state the nonce it issued and what the login asked for."""

    def __init__(self, request: _CheckedRequest, registration_uuid: Any, remembered: dict[str, str]) -> None:
        super().__init__(
            request,
            DjangoToolConfig(registration_uuid),
            session_service=_LoginSession(request),
            launch_data_storage=DjangoCacheDataStorage(),
        )
        self.pass_params_to_launch(dict(remembered))

    def _generate_nonce(self) -> str:
        nonce = super()._generate_nonce()
        self._state_params["nonce"] = nonce  # saved with the state right after (OIDCLogin._prepare_redirect_url)
        return nonce


def start_login(request: HttpRequest, registration_uuid: Any, query: QueryDict, launch_url: str) -> HttpResponse:
    """The redirect to the LMS's authentication endpoint, or LaunchRefused. Writes nothing when refused."""
    parameters = login_parameters(query)
    registration = _registration(registration_uuid, parameters)
    # The login address names the registration: an LMS that omits client_id (it is optional) still logs in.
    parameters.setdefault("client_id", registration.client_id)
    remembered = {
        "issuer": registration.issuer,
        "client_id": registration.client_id,
        "target_link_uri": parameters["target_link_uri"],
    }
    try:
        return _Login(_CheckedRequest(request, parameters), registration_uuid, remembered).redirect(launch_url)
    except (OIDCException, LtiException) as error:  # OIDCException is not an LtiException
        raise LaunchRefused(f"The LMS's login request was refused: {error}.")


def asked_at_login(message_launch: MessageLaunch) -> dict[str, str] | None:
    """What the login for this launch's state remembered (nonce, issuer, client_id, target_link_uri)."""
    remembered = message_launch.get_params_from_login()
    return remembered if isinstance(remembered, dict) else None
