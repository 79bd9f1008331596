"""The tool's signing keys: which key signs for a registration, and how any key is shown to people.

Key material is shown only as a fingerprint (`fingerprint`): a private key never reaches a page,
an export, a log line or an audit entry.
"""
from __future__ import annotations

import hashlib
import json

from cryptography.hazmat.primitives import serialization
from jwcrypto.jwk import JWK
from lti_tool.models import Key, LtiRegistration

UNREADABLE = "unreadable key"


def tool_signing_key(registration: LtiRegistration) -> tuple[str, str]:
    """(private key PEM, kid): the registration's own static key, else the newest active tool key.

    The newest key is what django-lti publishes in /lti/jwks/ beside the older ones.
    """
    if registration.has_key:
        public = JWK.from_pem(registration.public_key.encode())
        return registration.private_key, json.loads(public.export_public()).get("kid") or public.thumbprint()
    key = Key.objects.active().latest()
    return key.private_key, key.as_jwk()["kid"]


def fingerprint(pem: str) -> str:
    """"kid … · SHA256:3f:a1:…" for a key PEM: its kid and the SHA-256 of its public key (DER SubjectPublicKeyInfo).

    A private key PEM gives its public half's fingerprint, so a private key can be named without
    being shown. "" for no key; a PEM that does not parse gives UNREADABLE, never an error.
    """
    if not (pem or "").strip():
        return ""
    try:
        jwk = JWK.from_pem(pem.encode())
        public = serialization.load_pem_public_key(jwk.export_to_pem())
    except Exception:  # noqa: BLE001 - pasted text of any shape is "unreadable", not a 500
        return UNREADABLE
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    kid = json.loads(jwk.export_public()).get("kid") or jwk.thumbprint()
    return f"kid {kid} · SHA256:{hashlib.sha256(der).digest().hex(':')}"


def public_pem(pem: str) -> str:
    """The public key PEM of a key PEM (public or private), "" if it does not parse."""
    try:
        return JWK.from_pem(pem.encode()).export_to_pem().decode()
    except Exception:  # noqa: BLE001
        return ""
