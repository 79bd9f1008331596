"""The staff audit trail: every change a staff member makes leaves one AuditEntry."""
from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils.functional import Promise

from .keys import fingerprint
from .models import AuditEntry, Institution
from .redaction import redact

# Fields holding key material (django-lti's Key and LtiRegistration): audited as fingerprints only.
KEY_FIELDS = frozenset({"private_key", "public_key"})


def audit_value(value: Any) -> Any:
    """A JSON-safe, human-readable form of a field value."""
    if isinstance(value, str):
        return redact(value)  # a secret pasted into any field never reaches the trail
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (models.Model, Promise, datetime.datetime, datetime.date, decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (list, tuple, set, models.QuerySet)):
        return [audit_value(v) for v in value]
    return str(value)


def key_change(old: Any, new: Any) -> list[str]:
    """[old, new] for a key field: fingerprints and what happened, never the key itself."""
    before = fingerprint(old or "") or "none"
    if not new:
        return [before, "removed"]
    return [before, f"{'set' if before == 'none' else 'changed'}: {fingerprint(new)}"]


def record_staff_change(
    *,
    actor: AbstractBaseUser | AnonymousUser | None,
    action: str,
    obj: models.Model | None = None,
    changes: dict[str, tuple[Any, Any]] | None = None,
    institution: Institution | None = None,
    actor_name: str | None = None,
) -> AuditEntry:
    """Record who changed what, from which value to which, in the caller's transaction.

    `actor_name`: who acted when it is no staff account (an instructor from an LTI launch); else "system".
    """
    authenticated = actor is not None and getattr(actor, "is_authenticated", False)
    return AuditEntry.objects.create(
        actor=actor if authenticated else None,
        actor_name=actor.get_username() if authenticated else (actor_name or "system")[:150],
        action=action,
        institution=institution,
        content_type=ContentType.objects.get_for_model(obj, for_concrete_model=False) if obj is not None else None,
        object_id=str(obj.pk) if obj is not None else "",
        object_repr=str(obj)[:300] if obj is not None else "",
        changes={
            field: key_change(old, new) if field in KEY_FIELDS else [audit_value(old), audit_value(new)]
            for field, (old, new) in (changes or {}).items()
        },
    )


def institution_of(obj: models.Model) -> Institution | None:
    """The institution an audited object belongs to, when it belongs to one."""
    if isinstance(obj, Institution):
        return obj
    for path in ("institution", "ownership.institution", "deployment.ownership.institution"):
        current: Any = obj
        try:
            for part in path.split("."):
                current = getattr(current, part)
        except Exception:  # noqa: BLE001 - a missing relation simply means "no institution"
            continue
        if isinstance(current, Institution):
            return current
    return None
