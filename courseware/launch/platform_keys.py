"""Platform public keys (JWKS), cached for all processes, refetched once on an unknown `kid`.

Platforms rotate keys (D2L about hourly): a `kid` we have not seen makes us refetch the JWKS
once; refetches are rate-limited per registration so forged kids cannot make us hammer the LMS.
"""
from __future__ import annotations

import logging
from typing import Any

import jwt
import requests
from django.core.cache import cache
from lti_tool.models import LtiRegistration

logger = logging.getLogger(__name__)

JWKS_CACHE_SECONDS = 3600
REFETCH_MIN_INTERVAL_SECONDS = 10
HTTP_TIMEOUT = (3.05, 10)


class PlatformKeyError(Exception):
    """The platform's key for this token could not be found."""


def _cache_key(registration: LtiRegistration) -> str:
    return f"lti:platform-jwks:{registration.pk}:{registration.keyset_url}"


def _fetch(registration: LtiRegistration) -> dict[str, Any]:
    try:
        response = requests.get(
            registration.keyset_url, timeout=HTTP_TIMEOUT, headers={"Accept": "application/json"}
        )
        response.raise_for_status()
        jwks = response.json()
    except (requests.RequestException, ValueError) as error:
        raise PlatformKeyError(f"The LMS's public keys could not be fetched from {registration.keyset_url}: {error}")
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise PlatformKeyError(f"The LMS's key set at {registration.keyset_url} is not a JWKS.")
    cache.set(_cache_key(registration), jwks, JWKS_CACHE_SECONDS)
    return jwks


def _find(jwks: dict[str, Any], kid: str) -> Any | None:
    for key in jwks.get("keys", []):
        if key.get("kid") == kid:
            return jwt.PyJWK(key, algorithm="RS256").key
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
