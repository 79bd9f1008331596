"""The LMS's context copy notices (PNS), as received: read-only for staff (the LMS wrote them)."""
from __future__ import annotations


from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..models import ContextCopyNotice
from .audit_trail import RecordOnlyAdmin


@admin.register(ContextCopyNotice)
class ContextCopyNoticeAdmin(RecordOnlyAdmin):
    list_display = ["received_at", "context_id_on_platform", "origins", "course_link", "deployment"]
    list_select_related = ["course", "deployment"]
    search_fields = ["context_id_on_platform", "notice_id"]
    fields = ["received_at", "notice_id", "deployment", "context_id_on_platform", "origin_context_ids", "course_link", "claims"]
    readonly_fields = fields
    show_full_result_count = False
    ordering = ["-received_at", "-id"]

    @admin.display(description=_("copied from (LMS ids)"))
    def origins(self, notice: ContextCopyNotice) -> str:
        return ", ".join(notice.origin_context_ids) or "—"

    @admin.display(description=_("course"))
    def course_link(self, notice: ContextCopyNotice) -> str:
        if notice.course_id is None:
            return _("not launched yet")
        return format_html('<a href="{}">{}</a>', reverse("admin:institutions_course_change", args=[notice.course_id]), notice.course)
