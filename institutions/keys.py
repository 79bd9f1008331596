"""The tool's signing keys: which key signs, their rotation, and how any key is shown to people.

Platforms cache our JWKS (Moodle until a signature fails, others for hours), so a rotation is a
lifecycle (`ToolKeyLifecycle`): the next key is published first and signs only after
ROTATION_LEAD_HOURS; the key it replaces stays published ROTATION_GRACE_HOURS more, then is retired
(`Key.is_active` False: out of the JWKS). Exactly one key signs. The phases move on in the beat task
and, lazily, whenever something is signed, so a stopped beat never leaves a key missing.

Key material is shown only as a fingerprint (`fingerprint`): a private key never reaches a page,
an export, a log line or an audit entry.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from django.apps import apps as global_apps
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from jwcrypto.jwk import JWK
from lti_tool.models import Key, LtiRegistration

from .models import KeyPhase, ToolKeyLifecycle

UNREADABLE = "unreadable key"


def tool_signing_key(registration: LtiRegistration, now: datetime.datetime | None = None) -> tuple[str, str]:
    """(private key PEM, kid): the registration's own static key, else the tool key in phase *signing*.

    Client assertions and deep-linking responses are signed here, so only the signing key ever signs.
    """
    if registration.has_key:
        public = JWK.from_pem(registration.public_key.encode())
        return registration.private_key, json.loads(public.export_public()).get("kid") or public.thumbprint()
    key = signing_key(now)
    return key.private_key, key.as_jwk()["kid"]


def signing_key(now: datetime.datetime | None = None) -> Key:
    """The one key that signs, after moving any phase that is due (the lazy half of the beat task)."""
    now = now or timezone.now()
    if _due(now).exists():
        advance_rotation(now)
    state = ToolKeyLifecycle.objects.select_related("key").filter(phase=KeyPhase.SIGNING, key__is_active=True).first()
    return state.key if state else ensure_signing_key(now=now)


def _due(now: datetime.datetime) -> Any:
    return ToolKeyLifecycle.objects.filter(
        Q(phase=KeyPhase.NEXT, signing_from__lte=now) | Q(phase=KeyPhase.RETIRING, retire_after__lte=now)
    )


def ensure_signing_key(apps: Any = global_apps, now: datetime.datetime | None = None) -> Any:
    """The signing key, made if there is none: the newest published key takes the role, else a new key.

    Idempotent; works with migration (historical) models too, so `migrate` and every later start
    leave a key in the JWKS. A signing key someone deactivated by hand is marked retired.
    """
    key_model = apps.get_model("lti_tool", "Key")
    lifecycle_model = apps.get_model("institutions", "ToolKeyLifecycle")
    now = now or timezone.now()
    with transaction.atomic():
        current = lifecycle_model.objects.select_for_update().filter(phase=KeyPhase.SIGNING).first()
        if current is not None:
            if key_model.objects.filter(pk=current.key_id, is_active=True).exists():
                return key_model.objects.get(pk=current.key_id)
            current.phase, current.retired_at = KeyPhase.RETIRED, now
            current.save()
        published = key_model.objects.filter(is_active=True).exclude(lifecycle__phase=KeyPhase.RETIRED).order_by(
            "-datetime_created", "-pk")
        # A key platforms have had longest is safest: a *next* key only when nothing else is published.
        key = published.exclude(lifecycle__phase=KeyPhase.NEXT).first() or published.first()
        if key is None:
            key = _new_key(key_model)
        lifecycle_model.objects.update_or_create(
            key=key, defaults={"phase": KeyPhase.SIGNING, "published_at": key.datetime_created, "signing_from": now,
                               "grace": None, "retire_after": None},
        )
        return key


def _new_key(key_model: Any) -> Any:
    jwk = JWK.generate(kty="RSA", size=2048)
    return key_model.objects.create(
        public_key=jwk.export_to_pem().decode(), private_key=jwk.export_to_pem(private_key=True, password=None).decode()
    )


def lead_time() -> datetime.timedelta:
    return datetime.timedelta(hours=settings.ROTATION_LEAD_HOURS)


def grace_period() -> datetime.timedelta:
    return datetime.timedelta(hours=settings.ROTATION_GRACE_HOURS)


def advance_rotation(now: datetime.datetime | None = None) -> list[str]:
    """Move every phase that is due: a *next* key whose time has come signs (the signing key becomes
    *retiring* for its grace period, counted from the switch); a *retiring* key past its grace is retired
    and leaves the JWKS. Idempotent, safe to run from several processes. Returns what changed."""
    now = now or timezone.now()
    changed: list[str] = []
    with transaction.atomic():
        due_next = list(ToolKeyLifecycle.objects.select_for_update().select_related("key").filter(
            phase=KeyPhase.NEXT, signing_from__lte=now).order_by("signing_from", "pk"))
        if due_next:
            new = due_next[-1]
            for skipped in due_next[:-1]:  # only the newest of several due keys signs
                skipped.phase, skipped.retired_at = KeyPhase.RETIRED, now
                skipped.save()
                Key.objects.filter(pk=skipped.key_id).update(is_active=False)
            grace = new.grace if new.grace is not None else grace_period()
            # Retiring before signing: the constraint allows one signing row at any moment.
            for old in ToolKeyLifecycle.objects.select_for_update().filter(phase=KeyPhase.SIGNING):
                old.phase, old.retire_after = KeyPhase.RETIRING, now + grace
                old.save()
                changed.append(f"{fingerprint(old.key.public_key)} retiring until {old.retire_after:%Y-%m-%d %H:%M} UTC")
            new.phase, new.signing_from = KeyPhase.SIGNING, now
            new.save()
            changed.append(f"{fingerprint(new.key.public_key)} signing")
        for old in ToolKeyLifecycle.objects.select_for_update().select_related("key").filter(
                phase=KeyPhase.RETIRING, retire_after__lte=now):
            old.phase, old.retired_at = KeyPhase.RETIRED, now
            old.save()
            Key.objects.filter(pk=old.key_id).update(is_active=False)
            changed.append(f"{fingerprint(old.key.public_key)} retired")
    return changed


def next_phase_change(key: Key) -> datetime.datetime | None:
    """When the key's phase changes next (shown in the admin), None when nothing is planned."""
    state = getattr(key, "lifecycle", None)
    if state is None:
        return None
    if state.phase == KeyPhase.NEXT:
        return state.signing_from
    if state.phase == KeyPhase.RETIRING:
        return state.retire_after
    if state.phase == KeyPhase.SIGNING:
        upcoming = ToolKeyLifecycle.objects.filter(phase=KeyPhase.NEXT).order_by("-signing_from").first()
        return upcoming.signing_from if upcoming else None
    return None


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
