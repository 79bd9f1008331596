"""The tool's signing keys in the admin: state, kid and fingerprint, and rotation (audited)."""
from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import models
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext_lazy as _
from lti_tool.models import Key

from ..key_rotation import start_rotation
from ..keys import fingerprint, next_phase_change
from .audit_trail import AuditedAdminMixin


@admin.register(Key)
class KeyAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """The tool's signing keys and their rotation (institutions/keys.py). Phases are moved by the rotation only."""

    list_display = ["kid", "phase", "key_fingerprint", "phase_changes", "is_active", "datetime_created"]
    list_filter = ["is_active", "lifecycle__phase"]
    list_select_related = ["lifecycle"]
    fields = ["kid", "phase", "key_fingerprint", "phase_changes", "is_active", "datetime_created"]
    readonly_fields = fields
    actions = ["publish_new_key"]
    ordering = ["-datetime_created"]
    # Keeps the action menu when there is no key at all (Django hides it on an empty list otherwise).
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are generated, never pasted

    @admin.display(description="kid")
    def kid(self, key: Key) -> str:
        return key.as_jwk()["kid"]

    @admin.display(description=_("state"))
    def phase(self, key: Key) -> str:
        state = getattr(key, "lifecycle", None)
        if state is None:
            return _("published, outside rotation") if key.is_active else _("not published")
        return state.get_phase_display()

    @admin.display(description=_("changes phase"))
    def phase_changes(self, key: Key) -> str:
        when = next_phase_change(key)
        return f"{when:%Y-%m-%d %H:%M} UTC" if when else "—"

    @admin.display(description=_("fingerprint"))
    def key_fingerprint(self, key: Key) -> str:
        return fingerprint(key.public_key)  # the tool's private keys are shown to nobody

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # Rotate acts on no key in particular: it may run with none selected (or none present).
        if (request.method == "POST" and request.POST.get("action") == "publish_new_key"
                and not request.POST.getlist(ACTION_CHECKBOX_NAME)):
            request.POST = request.POST.copy()
            # Django runs an action only with a row ticked; "across all" keeps it from filtering by that row.
            request.POST.setlist(ACTION_CHECKBOX_NAME, ["all"])
            request.POST["select_across"] = "1"
        return super().changelist_view(request, extra_context)

    @admin.action(description=_("Rotate: publish a new key now, sign with it after the lead time, retire the old one "
                                "after the grace period"), permissions=["change"])
    def publish_new_key(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        rotation = start_rotation(actor=request.user)
        self.message_user(request, _(
            "Key %(new)s published. It signs from %(signs)s UTC; the old key stays published until %(retire)s UTC."
        ) % {"new": fingerprint(rotation.new_key.public_key), "signs": f"{rotation.signing_from:%Y-%m-%d %H:%M}",
             "retire": f"{rotation.retire_old_after:%Y-%m-%d %H:%M}"})
