"""Starting a rotation of the tool's signing key (the admin's Rotate action and `rotate_tool_key`), audited.

The phases themselves, and which key signs, are in `institutions.keys`; this module adds the audit
trail, which the AGS client (that signs through `keys`) must not import.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone
from lti_tool.models import Key

from .audit import record_staff_change
from .keys import advance_rotation, ensure_signing_key, fingerprint, grace_period, lead_time
from .models import KeyPhase, ToolKeyLifecycle


@dataclass(frozen=True)
class Rotation:
    """A started rotation: the key published now and the one it replaces (by fingerprint in the audit)."""

    new_key: Key
    old_key: Key | None
    signing_from: datetime.datetime
    retire_old_after: datetime.datetime


def start_rotation(
    *,
    actor: Any,
    lead: datetime.timedelta | None = None,
    grace: datetime.timedelta | None = None,
    now: datetime.datetime | None = None,
) -> Rotation:
    """Publish a new key as *next*; it signs after `lead` (0: at once) and the current signing key
    stays published `grace` after that. Audited with fingerprints. A rotation already under way is
    replaced: its next key is retired unused (it never signed, so no platform relies on it).
    """
    now = now or timezone.now()
    lead = lead_time() if lead is None else lead
    grace = grace_period() if grace is None else grace
    with transaction.atomic():
        old = ensure_signing_key(now=now)
        ToolKeyLifecycle.objects.filter(phase=KeyPhase.NEXT).update(phase=KeyPhase.RETIRED, retired_at=now)
        # Keys published outside any rotation (django-lti's rotate_keys, older versions) leave with the old key.
        for other in Key.objects.active().filter(lifecycle__isnull=True):
            ToolKeyLifecycle.objects.create(key=other, phase=KeyPhase.RETIRING, published_at=other.datetime_created,
                                            retire_after=now + lead + grace)
        Key.objects.filter(lifecycle__phase=KeyPhase.RETIRED, is_active=True).update(is_active=False)
        new = Key.objects.generate()
        ToolKeyLifecycle.objects.create(key=new, phase=KeyPhase.NEXT, published_at=now, signing_from=now + lead,
                                        grace=grace)
        record_staff_change(
            actor=actor, action="key.rotated", obj=new,
            changes={
                "public_key": (None, new.public_key),  # audited as its fingerprint
                "signing key": (fingerprint(old.public_key), fingerprint(new.public_key)),
                "signs from": (None, (now + lead).isoformat()),
                "old key retired after": (None, (now + lead + grace).isoformat()),
            },
        )
        rotation = Rotation(new_key=new, old_key=old, signing_from=now + lead, retire_old_after=now + lead + grace)
    if not lead:
        advance_rotation(now)
    return rotation
