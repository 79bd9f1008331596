"""Staff roles: the Support, Integration and Read-only groups and what each may do.

The groups are made by migration `0002_create_staff_roles` (which works on an empty database)
and kept in step by a post_migrate hook, so a model added by a later migration joins the
roles without another hand-written migration.
"""
from __future__ import annotations

from typing import Any

SUPPORT = "Support"
INTEGRATION = "Integration"
READ_ONLY = "Read-only"

# Apps whose models staff see in the admin.
STAFF_APPS = ["lti_tool", "institutions", "courseware", "gradesync", "auth"]
# Every role reads everything staff can see, but never users and groups' secrets to change.
# (app label, model, verbs) each role may use beyond viewing; plus named permissions.
ROLE_RULES: dict[str, dict[str, Any]] = {
    # Every staff role reads grade sync diagnostics and health (gradesync.admin_support).
    READ_ONLY: {"manage": [], "named": [("gradesync", "view_diagnostics")]},
    INTEGRATION: {
        "manage": [
            ("lti_tool", "ltiregistration", ["add", "change", "delete"]),
            ("lti_tool", "ltideployment", ["add", "change", "delete"]),
            ("lti_tool", "key", ["add", "change"]),
            ("institutions", "institution", ["add", "change"]),
            ("institutions", "registrationprofile", ["add", "change", "delete"]),
            ("institutions", "deploymentownership", ["add", "change", "delete"]),
            # Dynamic Registration links: made (and audited) by institutions.dynamic_registration, never edited.
            ("institutions", "registrationinvitation", ["add"]),
        ],
        "named": [("gradesync", "view_diagnostics")],
    },
    SUPPORT: {
        "manage": [("institutions", "course", ["change"])],
        "named": [
            ("institutions", "change_grade_policy"),
            ("gradesync", "resync_grades"),
            ("gradesync", "view_diagnostics"),
        ],
    },
}


def permissions_for_role(role: str, permission_model: Any) -> Any:
    """The queryset of permissions a role holds (works with historical models)."""
    from django.db.models import Q

    rules = ROLE_RULES[role]
    query = Q(content_type__app_label__in=STAFF_APPS, codename__startswith="view_")
    for app_label, model, verbs in rules["manage"]:
        query |= Q(
            content_type__app_label=app_label,
            content_type__model=model,
            codename__in=[f"{verb}_{model}" for verb in verbs],
        )
    for app_label, codename in rules["named"]:
        query |= Q(content_type__app_label=app_label, codename=codename)
    return permission_model.objects.filter(query)


def sync_staff_roles(apps: Any) -> None:
    """Create the three groups and set exactly their permissions.

    Permissions are normally made by post_migrate after every migration has run, so they are
    created here first: on an empty database this runs before they exist.
    """
    from django.apps import apps as global_apps
    from django.contrib.auth.management import create_permissions

    for app_config in global_apps.get_app_configs():
        create_permissions(app_config, apps=apps, verbosity=0)
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for role in ROLE_RULES:
        group, _ = group_model.objects.get_or_create(name=role)
        group.permissions.set(permissions_for_role(role, permission_model))


def sync_staff_roles_after_migrate(sender: Any, apps: Any = None, **kwargs: Any) -> None:
    if sender.name != "institutions" or apps is None:
        return
    try:
        apps.get_model("auth", "Group")
    except LookupError:
        return
    sync_staff_roles(apps)
