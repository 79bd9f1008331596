"""Platform public keys (JWKS), cached for all processes as long as the platform allows.

How long a fetched key set is trusted follows the platform's HTTP caching headers
(`jwks_lifetime`): a key the platform withdraws stops verifying launches once its max-age has
passed. Platforms also rotate keys (D2L about hourly): a `kid` we have not seen makes us refetch
the JWKS, at most once per interval per registration, so forged kids cannot make us hammer the LMS.
A key set that is too big, not JSON, or whose key for the `kid` is not an RSA key is a refusal.
"""
from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import jwt
import requests
import urllib3
from django.core.cache import cache
from lti_tool.models import LtiRegistration

from .refusals import shown

logger = logging.getLogger(__name__)

# Trusted at least this long even when the platform says no-store: each launch must not refetch.
JWKS_MIN_CACHE_SECONDS = 60
# Trusted at most this long, whatever the platform says: a withdrawn key is dropped within the hour.
JWKS_MAX_CACHE_SECONDS = 3600
# No caching header at all: 5 minutes. Platforms that say nothing (Moodle, most self-hosted ones)
# may still rotate or withdraw keys; a short default bounds how long a withdrawn key stays trusted,
# and a new kid triggers a refetch anyway, so launches never wait on it.
JWKS_DEFAULT_CACHE_SECONDS = 300
JWKS_MAX_BYTES = 256 * 1024
REFETCH_MIN_INTERVAL_SECONDS = 10
HTTP_TIMEOUT = (3.05, 10)


class PlatformKeyError(Exception):
    """The platform's key for this token could not be found or used."""


def jwks_lifetime(headers: Mapping[str, str], now: float | None = None) -> int:
    """Seconds to trust a key set, from its response's Cache-Control (or Expires), clamped."""
    directives = {}
    for part in (headers.get("Cache-Control") or "").split(","):
        name, _, value = part.strip().partition("=")
        directives[name.strip().lower()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return JWKS_MIN_CACHE_SECONDS
    seconds: float | None = None
    if re.fullmatch(r"\d+", directives.get("max-age", "")):
        seconds = int(directives["max-age"])
    elif headers.get("Expires"):
        try:
            expires = email.utils.parsedate_to_datetime(headers["Expires"]).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            expires = 0  # an invalid Expires means "already expired" (RFC 9111 §5.3)
        seconds = expires - (time.time() if now is None else now)
    if seconds is None:
        return JWKS_DEFAULT_CACHE_SECONDS
    return int(min(max(seconds, JWKS_MIN_CACHE_SECONDS), JWKS_MAX_CACHE_SECONDS))


def _cache_key(registration: LtiRegistration) -> str:
    return f"lti:platform-jwks:{registration.pk}:{registration.keyset_url}"


def _fetch(registration: LtiRegistration) -> dict[str, Any]:
    where = registration.keyset_url
    try:
        with requests.get(where, timeout=HTTP_TIMEOUT, headers={"Accept": "application/json"}, stream=True) as response:
            response.raise_for_status()
            body = response.raw.read(JWKS_MAX_BYTES + 1, decode_content=True)
            headers = response.headers
    except requests.RequestException as error:
        raise PlatformKeyError(f"The LMS's public keys could not be fetched from {where}: {error}")
    except urllib3.exceptions.HTTPError as error:  # reading the raw body: not wrapped by requests
        raise PlatformKeyError(f"The LMS's public keys could not be read from {where}: {error}")
    if len(body) > JWKS_MAX_BYTES:
        raise PlatformKeyError(f"The LMS's key set at {where} is larger than {JWKS_MAX_BYTES // 1024} KB.")
    try:
        jwks = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise PlatformKeyError(f"The LMS's key set at {where} is not JSON.")
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise PlatformKeyError(f"The LMS's key set at {where} is not a JWKS (no list of keys).")
    cache.set(_cache_key(registration), jwks, jwks_lifetime(headers))
    return jwks


def _find(jwks: dict[str, Any], kid: str) -> Any | None:
    for key in jwks.get("keys", []):
        if isinstance(key, dict) and key.get("kid") == kid:
            try:
                return jwt.PyJWK(key, algorithm="RS256").key
            except (jwt.PyJWTError, TypeError, ValueError, KeyError, AttributeError) as error:
                raise PlatformKeyError(f"The LMS's published key {kid!r} is not a usable RSA key ({error}).")
    return None


def platform_key(registration: LtiRegistration, kid: str) -> Any:
    """The platform's public key for `kid`, from the shared cache or freshly fetched."""
    jwks = cache.get(_cache_key(registration))
    if jwks is not None:
        key = _find(jwks, kid)
        if key is not None:
            return key
    # Unknown kid (or nothing cached): refetch, but at most once per interval per registration.
    if jwks is None or cache.add(f"{_cache_key(registration)}:refetch", 1, REFETCH_MIN_INTERVAL_SECONDS):
        jwks = _fetch(registration)
        key = _find(jwks, kid)
        if key is not None:
            return key
    raise PlatformKeyError(f"The LMS signed this launch with a key (kid {kid!r}) that it does not publish.")


def decode_platform_token(
    token: str, kid: Any, registration: LtiRegistration, *, required: list[str], max_age: int, leeway: int,
    refused: Any, what: str, again: str = "",
) -> dict[str, Any]:
    """The verified claims of a JWT the platform signed for us (a launch's id_token, a PNS notice).

    Every failure raises `refused(reason, status=…)`, the caller's own refusal, with `what` naming the token
    ("The launch token", "A notice") and `again` telling the person what to do after an expiry.
    """
    try:
        key = platform_key(registration, kid)
    except PlatformKeyError as error:
        raise refused(str(error), status=401)
    try:
        claims = jwt.decode(
            token, key, algorithms=["RS256"], audience=registration.client_id, issuer=registration.issuer,
            leeway=leeway, options={"require": required},
        )
    except jwt.ExpiredSignatureError:
        raise refused(f"{what} has expired.{again}", status=401)
    except jwt.ImmatureSignatureError:
        raise refused(f"{what} was issued in the future (check the LMS clock).", status=401)
    except jwt.InvalidSignatureError:
        raise refused(f"{what}'s signature does not match the LMS's key (forged or altered).", status=401)
    except jwt.MissingRequiredClaimError as error:
        raise refused(f"{what} lacks the required claim {error.claim!r}.", status=401)
    except jwt.PyJWTError as error:
        raise refused(f"{what} is not valid: {shown(str(error), 200)[1:-1]}.", status=401)
    if claims["iat"] < time.time() - max_age:
        raise refused(f"{what} is too old.{again}", status=401)
    return claims
