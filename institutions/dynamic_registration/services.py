"""Register the tool with an LMS by LTI Dynamic Registration: the one write of this package.

The order is the spec's, and nothing is saved before the platform has answered: check the link,
fetch and check the platform's configuration, POST ours, check the answer, then save the
registration, its profile, its deployment and the deployment's owner in one transaction, with the
link marked used. A refusal anywhere saves nothing but the link's `last_refusal` (support reads why).
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone
from lti_tool.models import LtiDeployment, LtiRegistration

from ..audit import record_staff_change
from ..models import DeploymentOwnership, LmsFamily, RegisteredVia, RegistrationInvitation, RegistrationProfile
from ..tool_configuration import default_registration_name
from .client_configuration import client_configuration, requested_scopes
from .invitations import InvitationRefused, find_usable
from .platform import OpenIdConfiguration, PlatformRefused, fetch_openid_configuration, post_registration

logger = logging.getLogger(__name__)

MAX_REGISTRATION_TOKEN_LENGTH = 8192


class RegistrationRefused(Exception):
    """Dynamic Registration did not happen; `reason` is for the LMS admin, `status` the page's HTTP status."""

    def __init__(self, reason: str, *, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Registered:
    registration: LtiRegistration
    deployment: LtiDeployment | None
    invitation: RegistrationInvitation
    lms_name: str

    @property
    def active(self) -> bool:
        return self.deployment is not None and self.deployment.is_active


def register(*, token: str, openid_configuration_url: object, registration_token: object, base_url: str) -> Registered:
    """Register with the platform that opened the link `token`; RegistrationRefused says why not."""
    try:
        invitation = find_usable(token)
    except InvitationRefused as refused:
        raise RegistrationRefused(refused.reason, status=refused.status) from None
    try:
        if registration_token is None:
            registration_token = ""
        if not isinstance(registration_token, str) or len(registration_token) > MAX_REGISTRATION_TOKEN_LENGTH:
            raise PlatformRefused("The LMS's registration_token is not a token (too long or not text).")
        configuration = fetch_openid_configuration(openid_configuration_url)
        lms_family = configuration.lms_family if configuration.lms_family != LmsFamily.OTHER else invitation.lms_family
        registration = LtiRegistration(uuid=uuid.uuid4())  # its login URL names the uuid: known before the POST
        answer = post_registration(
            configuration,
            client_configuration=client_configuration(
                base_url=base_url, registration=registration, configuration=configuration, lms_family=lms_family
            ),
            registration_token=registration_token,
        )
        return _save(
            invitation=invitation, registration=registration, configuration=configuration,
            lms_family=lms_family, client_id=answer.client_id, deployment_id=answer.deployment_id,
        )
    except PlatformRefused as refused:
        _note_refusal(invitation, refused.reason)
        raise RegistrationRefused(refused.reason, status=refused.status) from None


def _save(
    *,
    invitation: RegistrationInvitation,
    registration: LtiRegistration,
    configuration: OpenIdConfiguration,
    lms_family: str,
    client_id: str,
    deployment_id: str,
) -> Registered:
    institution = invitation.institution
    lms_name = LmsFamily(lms_family).label
    existing = LtiRegistration.objects.filter(issuer=configuration.issuer, client_id=client_id).first()
    if existing is not None:
        raise PlatformRefused(
            f"The platform gave client ID {client_id}, which is already registered here as “{existing.name}”. "
            "Nothing new was saved; the integration team can check that registration."
        )
    activate = invitation.activate_on_registration
    now = timezone.now()
    try:
        with transaction.atomic():
            # Taken once: a second window opening the same link at the same moment finds it used.
            taken = RegistrationInvitation.objects.filter(pk=invitation.pk, used_at__isnull=True).update(used_at=now)
            if not taken:
                raise PlatformRefused("This registration link was used a moment ago in another window.")
            registration.name = default_registration_name(lms=lms_name, institution=institution.name)[:255]
            registration.issuer = configuration.issuer
            registration.client_id = client_id
            registration.audience = configuration.audience
            registration.auth_url = configuration.authorization_endpoint
            registration.token_url = configuration.token_endpoint
            registration.keyset_url = configuration.jwks_uri
            # The registration itself is complete and identifies the platform; whether launches are taken
            # is the deployment's state, which the deployment admin activates in one click.
            registration.is_active = True
            registration.save()
            RegistrationProfile.objects.create(
                registration=registration,
                lms_family=lms_family,
                registered_via=RegisteredVia.DYNAMIC,
                platform_configuration={
                    **configuration.platform,
                    "scopes_requested": requested_scopes(configuration),
                },
            )
            deployment = None
            if deployment_id:
                deployment = LtiDeployment.objects.create(
                    registration=registration, deployment_id=deployment_id, is_active=activate
                )
                DeploymentOwnership.objects.create(deployment=deployment, institution=institution)
            RegistrationInvitation.objects.filter(pk=invitation.pk).update(registration=registration, last_refusal="")
            record_staff_change(
                actor=None,
                action="ltiregistration.registered_dynamically",
                obj=registration,
                institution=institution,
                changes={
                    "issuer": (None, registration.issuer),
                    "client_id": (None, client_id),
                    "deployment_id": (None, deployment_id or None),
                    "lms_family": (None, lms_name),
                    "active": (None, bool(deployment and deployment.is_active)),
                    "invitation": (None, invitation.pk),
                },
            )
    except IntegrityError:
        # Another registration with this (issuer, client ID) was saved between our check and our write.
        raise PlatformRefused(
            f"The platform gave client ID {client_id}, which was registered here a moment ago. Nothing new was saved."
        ) from None
    invitation.refresh_from_db()
    logger.info(
        "Dynamic Registration: %s registered %s (client %s, deployment %s) for %s",
        lms_name, registration.issuer, client_id, deployment_id or "-", institution.slug,
    )
    return Registered(registration=registration, deployment=deployment, invitation=invitation, lms_name=lms_name)


def _note_refusal(invitation: RegistrationInvitation, reason: str) -> None:
    # A link another window has just used keeps its success; only a still-usable link records why it failed.
    RegistrationInvitation.objects.filter(pk=invitation.pk, used_at__isnull=True).update(last_refusal=reason[:500])
