"""The staff UI for tenants and onboarding, one module per thing staff look after. Every change is audited.

Importing the package registers every admin (the modules below); the names other apps' admins build on
are re-exported here.
"""
from .audit_trail import AuditedAdminMixin
from .deployments import DeploymentAdmin
from .invitations import RegistrationInvitationAdmin
from .keys import KeyAdmin
from .notices import ContextCopyNoticeAdmin
from .registrations import RegistrationAdmin
from .tenants import CourseAdmin, GradePolicyForm, InstitutionAdmin

__all__ = ["AuditedAdminMixin", "ContextCopyNoticeAdmin", "CourseAdmin", "DeploymentAdmin", "GradePolicyForm", "InstitutionAdmin", "KeyAdmin", "RegistrationAdmin",
           "RegistrationInvitationAdmin"]
