"""Grade sync in the admin: the ledger, the outbox and each exchange with the LMS."""
from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from .models import Delivery, DeliveryExchange, Result, SyncWarning


class ReadOnlyAdmin(admin.ModelAdmin):
    """Machine-written rows: staff read them; changes go through actions that audit themselves."""

    show_full_result_count = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class DeliveryExchangeInline(admin.TabularInline):
    model = DeliveryExchange
    fields = ["attempted_at", "status_code", "outcome", "score_given", "score_maximum", "timestamp_sent", "duration_ms", "message"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["-attempted_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ["id", "status", "learner", "course", "activity_key", "score", "attempts", "last_status_code", "updated_at"]
    list_filter = ["status", "is_resync", "institution"]
    list_select_related = ["lti_user", "course"]
    raw_id_fields = ["result", "course", "lti_user", "line_item", "resource_link"]
    search_fields = ["=id", "lti_user__sub", "lti_user__email"]
    ordering = ["-id"]
    inlines = [DeliveryExchangeInline]

    @admin.display(description=_("learner"), ordering="lti_user__name")
    def learner(self, delivery: Delivery) -> str:
        return delivery.lti_user.name or delivery.lti_user.email or delivery.lti_user.sub


@admin.register(Result)
class ResultAdmin(ReadOnlyAdmin):
    list_display = ["id", "activity_title", "learner", "course", "score", "completed_at", "is_eligible", "ineligible_reason"]
    list_filter = ["is_eligible", "launch_role"]
    list_select_related = ["lti_user", "course"]
    raw_id_fields = ["lti_user", "course", "resource_link", "launched_course", "launch_deployment"]
    search_fields = ["=id", "lti_user__sub", "lti_user__email", "activity_title"]
    ordering = ["-id"]

    @admin.display(description=_("learner"))
    def learner(self, result: Result) -> str:
        if result.lti_user is None:
            return "—"
        return result.lti_user.name or result.lti_user.email or result.lti_user.sub


@admin.register(SyncWarning)
class SyncWarningAdmin(ReadOnlyAdmin):
    list_display = ["course", "activity_key", "kind", "message", "updated_at"]
    list_select_related = ["course"]
    list_filter = ["kind"]
