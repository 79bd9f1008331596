"""One-time Dynamic Registration links: made by the integration team for one institution, used once
by that institution's LMS admin, expiring after a few days. Only the token's SHA-256 is stored."""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from ..audit import record_staff_change
from ..models import Institution, LmsFamily, RegistrationInvitation

DEFAULT_LIFETIME = timedelta(days=getattr(settings, "DYNAMIC_REGISTRATION_LINK_DAYS", 7))
MAX_LIFETIME = timedelta(days=30)
# secrets.token_urlsafe(32) gives 43 characters; anything much longer is not one of ours.
MAX_TOKEN_LENGTH = 100


class InvitationRefused(Exception):
    """A link that cannot register: unknown, expired or already used (the reason says which)."""

    def __init__(self, reason: str, *, status: int, invitation: RegistrationInvitation | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.invitation = invitation


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def registration_path(token: str) -> str:
    return reverse("dynamic-registration", args=[token])


def create_invitation(
    *,
    institution: Institution,
    lms_family: str = LmsFamily.OTHER,
    activate_on_registration: bool = False,
    actor: AbstractBaseUser | None,
    lifetime: timedelta = DEFAULT_LIFETIME,
    base_url: str,
) -> tuple[RegistrationInvitation, str]:
    """A new link for `institution`'s LMS admin: (invitation, full link). The link is shown once;
    the audit entry names the institution, LMS and expiry, never the token."""
    if lms_family not in LmsFamily.values:
        raise ValueError(f"Unknown LMS {lms_family!r}")
    if not timedelta(0) < lifetime <= MAX_LIFETIME:
        raise ValueError(f"A link lasts between a minute and {MAX_LIFETIME.days} days.")
    token = secrets.token_urlsafe(32)
    now = timezone.now()
    with transaction.atomic():
        invitation = RegistrationInvitation.objects.create(
            institution=institution,
            token_sha256=token_digest(token),
            lms_family=lms_family,
            activate_on_registration=activate_on_registration,
            created_by=actor if actor is not None and actor.is_authenticated else None,
            expires_at=now + lifetime,
        )
        record_staff_change(
            actor=actor,
            action="registrationinvitation.created",
            obj=invitation,
            institution=institution,
            changes={
                "lms_family": (None, invitation.get_lms_family_display()),
                "activate_on_registration": (None, activate_on_registration),
                "expires_at": (None, invitation.expires_at),
            },
        )
    return invitation, base_url.rstrip("/") + registration_path(token)


def find_usable(token: object) -> RegistrationInvitation:
    """The invitation a link's token opens, or InvitationRefused saying why not (unknown, used, expired)."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvitationRefused(_UNKNOWN, status=404)
    invitation = (
        RegistrationInvitation.objects.select_related("institution", "registration")
        .filter(token_sha256=token_digest(token))
        .first()
    )
    if invitation is None:
        raise InvitationRefused(_UNKNOWN, status=404)
    if invitation.used_at is not None:
        named = f" It registered “{invitation.registration.name}”" if invitation.registration else ""
        raise InvitationRefused(
            f"This registration link was already used on {invitation.used_at:%Y-%m-%d %H:%M} UTC.{named}. "
            "A link registers once: if the LMS shows the tool, it is done; to register again, ask the "
            "integration team for a new link.",
            status=409, invitation=invitation,
        )
    if invitation.expires_at <= timezone.now():
        raise InvitationRefused(
            f"This registration link expired on {invitation.expires_at:%Y-%m-%d %H:%M} UTC. "
            "Ask the integration team for a new link.",
            status=410, invitation=invitation,
        )
    return invitation


_UNKNOWN = (
    "This registration link is not known: check that it was pasted whole, or ask the integration team for a new one."
)
