"""Writes for tenants and onboarding. Admin views, actions and commands all call these."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from lti_tool.models import LtiDeployment

from .audit import record_staff_change
from .models import DeploymentOwnership, GradePolicy, Institution

CHANGE_GRADE_POLICY_PERMISSION = "institutions.change_grade_policy"


@transaction.atomic
def change_grade_policy(*, institution: Institution, policy: str, acting_user: AbstractBaseUser) -> bool:
    """Set the institution's grade policy. Only holders of `change_grade_policy` may.

    Returns False when the policy was already `policy` (nothing recorded).
    """
    if not acting_user.has_perm(CHANGE_GRADE_POLICY_PERMISSION):
        raise PermissionDenied("Only Support staff change the grade policy.")
    if policy not in GradePolicy.values:
        raise ValidationError(f"Unknown grade policy {policy!r}.")
    institution = Institution.objects.select_for_update().get(pk=institution.pk)
    old = institution.grade_policy
    if old == policy:
        return False
    institution.grade_policy = policy
    institution.save(update_fields=["grade_policy", "updated_at"])
    record_staff_change(
        actor=acting_user,
        action="grade_policy.changed",
        obj=institution,
        institution=institution,
        changes={"grade_policy": (GradePolicy(old).label, GradePolicy(policy).label)},
    )
    return True


@transaction.atomic
def assign_deployment(
    *, deployment: LtiDeployment, institution: Institution, activate: bool, acting_user: AbstractBaseUser
) -> DeploymentOwnership:
    """Give a deployment to an institution (at most one owner) and optionally activate it."""
    deployment = LtiDeployment.objects.select_for_update().get(pk=deployment.pk)
    ownership = DeploymentOwnership.objects.filter(deployment=deployment).select_related("institution").first()
    if ownership is not None and ownership.institution_id != institution.pk:
        raise ValidationError(
            f"Deployment {deployment.deployment_id} already belongs to {ownership.institution}. "
            "Remove that ownership first."
        )
    changes = {}
    if ownership is None:
        ownership = DeploymentOwnership.objects.create(
            deployment=deployment, institution=institution, assigned_by=acting_user
        )
        changes["institution"] = (None, str(institution))
    if activate and not deployment.is_active:
        deployment.is_active = True
        deployment.save(update_fields=["is_active", "datetime_modified"])
        changes["is_active"] = (False, True)
    if changes:
        record_staff_change(
            actor=acting_user, action="deployment.assigned", obj=deployment, institution=institution, changes=changes
        )
    return ownership
