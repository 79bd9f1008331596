"""The shapes of an id_token's claims, checked before anything is written.

A wrong shape is a refusal naming the claim (never a TypeError, AttributeError or DataError
further on). The rules, from LTI Core / AGS / NRPS / Deep Linking and the columns django-lti
writes each claim into:

- Anywhere in the token: no NUL character, no unpaired surrogate (PostgreSQL and UTF-8 cannot
  store them), no NaN/Infinity (not JSON), no nesting deeper than a real LMS sends.
- Ids (`sub`, `deployment_id`, context / resource link ids, `tool_platform.guid`): non-empty
  strings of at most 255 characters without control characters. An id must never be truncated
  (two ids would merge), so a longer one is refused. An integer id is accepted as its decimal
  string: the value we store is the same, and a platform serialising database ids as numbers is
  a harmless quirk rather than an attack.
- Objects are objects, lists are lists of strings, booleans are booleans, texts fit their column.
  A member sent as `null` is treated as absent (django-lti would write NULL into NOT NULL columns).
- `custom` must be an object; a value that is not a string is ignored, not refused: LTI says
  custom values are strings, but refusing a learner's launch over a parameter the tool never reads
  would cost them their grade for an LMS admin's setting. (VerifiedLaunch.custom keeps strings only.)
- Values the launch can do without, and that we cannot store as sent, are dropped rather than
  refused: `picture` that is not an http(s) URL of at most 200 characters, `email` without an "@"
  or over 254 characters (django-lti writes them into a URLField / EmailField unvalidated), and a
  `launch_presentation.return_url` that is not an http(s) URL of at most 1000 characters (it is
  only where we send the learner back; a non-http one could not even be redirected to).
"""
from __future__ import annotations

import math
from typing import Any

from .refusals import LaunchRefused, has_unsafe_characters, is_http_url

LTI = "https://purl.imsglobal.org/spec/lti/claim/"
AGS_ENDPOINT = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
NRPS = "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"
DL_SETTINGS = "https://purl.imsglobal.org/spec/lti-dl/claim/deep_linking_settings"
PNS = LTI + "platformnotificationservice"

ID_MAX = 255  # LTI Core §5.3.3/§5.3.6, and django-lti's id columns
URL_MAX = 200  # django-lti's URLFields (line items, memberships, PNS, platform URL)
RETURN_URL_MAX = 1000  # Launch.return_url
LONG_URL_MAX = 2048
NAME_MAX = 500  # django-lti's name and title columns
LABEL_MAX = 255
EMAIL_MAX = 254
TEXT_MAX = 10_000
DATA_MAX = 8192  # deep-linking `data`, echoed back to the LMS
ROLES_MAX = 200
LIST_MAX = 100
DEPTH_MAX = 16


class _Id:
    def __init__(self, max_length: int = ID_MAX, required: bool = False) -> None:
        self.max_length, self.required = max_length, required


class _Text:
    def __init__(self, max_length: int = TEXT_MAX, required: bool = False, url: bool = False) -> None:
        self.max_length, self.required, self.url = max_length, required, url


class _Strings:
    def __init__(self, max_items: int = LIST_MAX, max_length: int = LABEL_MAX) -> None:
        self.max_items, self.max_length = max_items, max_length


class _Bool:
    required = False


class _Number:
    required = False


# Each object claim: its plain name and the members we check (other members pass, text-checked).
OBJECT_CLAIMS: dict[str, tuple[str, dict[str, Any]]] = {
    LTI + "context": ("context", {
        "id": _Id(required=True), "label": _Text(LABEL_MAX), "title": _Text(NAME_MAX), "type": _Strings(),
    }),
    LTI + "resource_link": ("resource_link", {
        "id": _Id(required=True), "title": _Text(NAME_MAX), "description": _Text(TEXT_MAX),
    }),
    LTI + "launch_presentation": ("launch_presentation", {
        "return_url": _Text(TEXT_MAX), "document_target": _Text(LABEL_MAX), "locale": _Text(LABEL_MAX),
        "width": _Number(), "height": _Number(),
    }),
    LTI + "lis": ("lis", {
        "person_sourcedid": _Text(LABEL_MAX), "course_offering_sourcedid": _Text(LABEL_MAX),
        "course_section_sourcedid": _Text(LABEL_MAX),
    }),
    LTI + "tool_platform": ("tool_platform", {
        "guid": _Id(required=True), "name": _Text(NAME_MAX), "product_family_code": _Text(NAME_MAX),
        "version": _Text(NAME_MAX), "url": _Text(URL_MAX), "contact_email": _Text(EMAIL_MAX),
        "description": _Text(TEXT_MAX),
    }),
    AGS_ENDPOINT: ("AGS endpoint (lti-ags/claim/endpoint)", {
        "scope": _Strings(), "lineitems": _Text(URL_MAX, url=True), "lineitem": _Text(URL_MAX, url=True),
    }),
    NRPS: ("names and roles (lti-nrps/claim/namesroleservice)", {
        "context_memberships_url": _Text(URL_MAX, required=True, url=True), "service_versions": _Strings(),
    }),
    DL_SETTINGS: ("deep_linking_settings", {
        "deep_link_return_url": _Text(LONG_URL_MAX, required=True, url=True), "accept_types": _Strings(),
        "accept_presentation_document_targets": _Strings(), "accept_media_types": _Text(LONG_URL_MAX),
        "accept_multiple": _Bool(), "accept_lineitem": _Bool(), "auto_create": _Bool(),
        "title": _Text(NAME_MAX), "text": _Text(TEXT_MAX), "data": _Text(DATA_MAX),
    }),
    PNS: ("platform notification service (platformnotificationservice)", {
        "platform_notification_service_url": _Text(URL_MAX, url=True), "notice_types_supported": _Strings(),
        "service_versions": _Strings(), "scope": _Strings(),
    }),
}

# Top-level claims that are strings.
TOP_LEVEL: dict[str, tuple[str, Any]] = {
    "sub": ("sub", _Id(required=True)),
    LTI + "deployment_id": ("deployment_id", _Id(required=True)),
    LTI + "target_link_uri": ("target_link_uri", _Text(LONG_URL_MAX, url=True)),
    "nonce": ("nonce", _Text(LABEL_MAX)),
    "given_name": ("given_name", _Text(NAME_MAX)),
    "family_name": ("family_name", _Text(NAME_MAX)),
    "middle_name": ("middle_name", _Text(NAME_MAX)),
    "name": ("name", _Text(NAME_MAX)),
    "locale": ("locale", _Text(LABEL_MAX)),
    "email": ("email", _Text(TEXT_MAX)),  # a string; one we cannot store is dropped below
    "picture": ("picture", _Text(TEXT_MAX)),
}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return f"a text of {len(value)} characters" if value else "an empty text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _refuse(claim: str, expectation: str, value: Any) -> LaunchRefused:
    return LaunchRefused(f"The launch's {claim} claim {expectation} (got {_kind(value)}).")


def _plain(name: str) -> str:
    """A claim name the platform chose, as it may appear in a reason: printable and short."""
    return name[:80] if name.isprintable() else repr(name)[:80]  # repr escapes control characters and surrogates


def _text_anywhere(claims: dict[str, Any]) -> None:
    """NUL, unpaired surrogates, non-finite numbers and deep nesting, wherever they are."""
    stack: list[tuple[str, Any, int]] = [(name, value, 1) for name, value in claims.items()]
    stack += [(name, name, 1) for name in claims]  # member names are stored too (JSON columns)
    while stack:
        name, value, depth = stack.pop()
        claim = _plain(name.rsplit("/", 1)[-1])
        if depth > DEPTH_MAX:
            raise LaunchRefused(f"The launch's {claim} claim is nested too deeply.")
        if isinstance(value, str):
            if "\x00" in value:
                raise LaunchRefused(f"The launch's {claim} claim contains a NUL character.")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise LaunchRefused(f"The launch's {claim} claim contains text that is not valid Unicode.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise LaunchRefused(f"The launch's {claim} claim contains a number that is not finite.")
        elif isinstance(value, list):
            stack += [(name, item, depth + 1) for item in value]
        elif isinstance(value, dict):
            stack += [(name, item, depth + 1) for item in value.values()]
            stack += [(name, key, depth + 1) for key in value]


def _checked_id(claim: str, value: Any, rule: _Id) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise _refuse(claim, "must be a non-empty string", value)
    if len(value) > rule.max_length:
        raise _refuse(claim, f"must be at most {rule.max_length} characters", value)
    if has_unsafe_characters(value):
        raise LaunchRefused(f"The launch's {claim} claim contains control characters.")
    return value


def _checked_text(claim: str, value: Any, rule: _Text) -> str:
    if not isinstance(value, str):
        raise _refuse(claim, "must be a string", value)
    if len(value) > rule.max_length:
        raise _refuse(claim, f"must be at most {rule.max_length} characters", value)
    if rule.url and not is_http_url(value):
        raise LaunchRefused(f"The launch's {claim} claim must be an http(s) URL.")
    return value


def _checked_strings(claim: str, value: Any, rule: _Strings) -> None:
    if not isinstance(value, list):
        raise _refuse(claim, "must be a list of strings", value)
    if len(value) > rule.max_items:
        raise LaunchRefused(f"The launch's {claim} claim has {len(value)} entries; at most {rule.max_items} are accepted.")
    for item in value:
        if not isinstance(item, str):
            raise _refuse(claim, "must be a list of strings", item)
        if len(item) > rule.max_length:
            raise _refuse(claim, f"entries must be at most {rule.max_length} characters", item)


def _checked_value(claim: str, value: Any, rule: Any) -> Any:
    """The value as it will be kept (ids may become strings); refuses a wrong shape."""
    if isinstance(rule, _Id):
        return _checked_id(claim, value, rule)
    if isinstance(rule, _Text):
        return _checked_text(claim, value, rule)
    if isinstance(rule, _Strings):
        _checked_strings(claim, value, rule)
    elif isinstance(rule, _Bool) and not isinstance(value, bool):
        raise _refuse(claim, "must be true or false", value)
    elif isinstance(rule, _Number) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise _refuse(claim, "must be a number", value)
    return value


def _check_object(claims: dict[str, Any], key: str, name: str, members: dict[str, Any]) -> None:
    value = claims.get(key)
    if value is None:
        claims.pop(key, None)
        return
    if not isinstance(value, dict):
        required = [m for m, rule in members.items() if getattr(rule, "required", False)]
        with_members = f" with a string {' and '.join(required)}" if required else ""
        raise _refuse(name, f"must be an object{with_members}", value)
    for member in [m for m, v in value.items() if v is None]:
        del value[member]
    for member, rule in members.items():
        if member in value:
            value[member] = _checked_value(f"{name} {member}", value[member], rule)
        elif getattr(rule, "required", False):
            raise LaunchRefused(f"The launch's {name} claim has no {member}.")


def _drop_unusable(claims: dict[str, Any]) -> None:
    """Values the launch can do without and that cannot be stored or used as sent (see the docstring)."""
    picture = claims.get("picture")
    if picture is not None and not (len(picture) <= URL_MAX and is_http_url(picture)):
        del claims["picture"]
    email = claims.get("email")
    if email is not None and not ("@" in email and len(email) <= EMAIL_MAX):
        del claims["email"]
    presentation = claims.get(LTI + "launch_presentation") or {}
    url = presentation.get("return_url")
    if url is not None and not (len(url) <= RETURN_URL_MAX and is_http_url(url)):
        del presentation["return_url"]


def _check_roles(claims: dict[str, Any]) -> None:
    roles = claims.get(LTI + "roles")
    if roles is not None:
        _checked_strings("roles", roles, _Strings(max_items=ROLES_MAX, max_length=NAME_MAX))


def _check_custom(claims: dict[str, Any]) -> None:
    custom = claims.get(LTI + "custom")
    if custom is None:
        claims.pop(LTI + "custom", None)
    elif not isinstance(custom, dict):
        raise _refuse("custom", "must be an object of strings", custom)


def check_claim_shapes(claims: dict[str, Any]) -> None:
    """Refuse (LaunchRefused, 400) a verified token whose claims have the wrong type, size or shape.

    Normalises in place what is accepted: integer ids become strings, null members are removed,
    unusable optional values are dropped (see the module docstring).
    """
    _text_anywhere(claims)
    for key, (name, rule) in TOP_LEVEL.items():
        if claims.get(key) is None:
            if getattr(rule, "required", False):
                raise LaunchRefused(f"The launch has no {name} claim.")
            claims.pop(key, None)
            continue
        claims[key] = _checked_value(name, claims[key], rule)
    _check_roles(claims)
    _check_custom(claims)
    for key, (name, members) in OBJECT_CLAIMS.items():
        _check_object(claims, key, name, members)
    _drop_unusable(claims)
