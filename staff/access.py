"""Which staff role a refused admin page needs, said so that a person knows whom to ask.

Django raises a bare PermissionDenied for admin pages; the permission is worked out from the
URL (a model admin's add/change/delete/changelist page, or a support page), and the roles that
hold it from `institutions.roles.ROLE_RULES`.
"""
from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.urls import Resolver404, resolve

from institutions.roles import ROLE_RULES, STAFF_APPS

# Model admin URL names end in one of these; the permission each needs.
ADMIN_VERBS = {"add": "add", "change": "change", "delete": "delete", "changelist": "view", "history": "view"}
# Pages the model admins add, by URL name -> the named permission their views check.
NAMED_PAGES = {
    "gradesync_resyncjob_resync": ("gradesync", "resync_grades"),
    "gradesync_resyncjob_cancel": ("gradesync", "resync_grades"),
    "institutions_institution_grade_policy": ("institutions", "change_grade_policy"),
}
# Support pages outside the model admins (gradesync.admin_support): URL name prefix -> permission.
SUPPORT_PAGES = {"gradesync_": ("gradesync", "view_diagnostics")}


def roles_holding(app_label: str, codename: str) -> list[str]:
    """The staff roles (in ROLE_RULES order) that hold app_label.codename."""
    verb, _, model = codename.partition("_")
    roles = []
    for role, rules in ROLE_RULES.items():
        viewing = verb == "view" and app_label in STAFF_APPS
        managing = any(app == app_label and name == model and verb in verbs for app, name, verbs in rules["manage"])
        if viewing or managing or (app_label, codename) in rules["named"]:
            roles.append(role)
    return roles


def permission_for_path(path: str) -> tuple[str, str] | None:
    """(app_label, codename) an admin URL needs, or None when the URL does not say."""
    try:
        match = resolve(path)
    except Resolver404:
        return None
    name = match.url_name or ""
    if match.namespace == admin.site.name:
        if name in NAMED_PAGES:
            return NAMED_PAGES[name]
        for model in admin.site._registry:
            prefix = f"{model._meta.app_label}_{model._meta.model_name}_"
            if name.startswith(prefix) and name[len(prefix):] in ADMIN_VERBS:
                return model._meta.app_label, f"{ADMIN_VERBS[name[len(prefix):]]}_{model._meta.model_name}"
        return None
    for prefix, permission in SUPPORT_PAGES.items():
        if name.startswith(prefix):
            return permission
    return None


def role_names(user: Any) -> str:
    if user.is_superuser:
        return "superuser"
    names = [group.name for group in user.groups.all() if group.name in ROLE_RULES]
    return ", ".join(names) or "no staff role"


def refusal(user: Any, path: str, reason: str = "") -> str:
    """'This needs the Integration role. You are signed in as readonly (Read-only). Ask an administrator.'"""
    permission = permission_for_path(path)
    if permission is not None and user.has_perm(".".join(permission)):
        # The role is right but this object refuses (e.g. a deployment its courses protect): no one to ask for a role.
        needed = "Your role may do this, but not to this item: its page says why."
        return f"{needed} You are signed in as {user.get_username()} ({role_names(user)})."
    if permission is not None:
        roles = roles_holding(*permission)
        named = ", ".join(roles[:-1]) + " or " + roles[-1] if len(roles) > 1 else "".join(roles)
        needed = (f"This needs the {named} role." if roles
                  else "This needs an administrator (superuser) account.")
    else:
        needed = reason or "This page needs a role you do not have."
    return f"{needed} You are signed in as {user.get_username()} ({role_names(user)}). Ask an administrator."
