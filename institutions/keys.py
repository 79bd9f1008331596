"""The tool's own signing key for a registration (deep-linking responses, service token assertions)."""
from __future__ import annotations

import json

from jwcrypto.jwk import JWK
from lti_tool.models import Key, LtiRegistration


def tool_signing_key(registration: LtiRegistration) -> tuple[str, str]:
    """(private key PEM, kid): the registration's own static key, else the newest active tool key.

    The newest key is what django-lti publishes in /lti/jwks/ beside the older ones.
    """
    if registration.has_key:
        public = JWK.from_pem(registration.public_key.encode())
        return registration.private_key, json.loads(public.export_public()).get("kid") or public.thumbprint()
    key = Key.objects.active().latest()
    return key.private_key, key.as_jwk()["kid"]
