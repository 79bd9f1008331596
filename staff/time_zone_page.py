"""The page where a staff member chooses the zone their admin pages show times in (staff.time_zones)."""
from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from .models import StaffPreference
from .time_zones import BROWSER_SESSION_KEY, choose_zone, zone_names


class TimeZoneForm(forms.Form):
    time_zone = forms.ChoiceField(label="Time zone", required=False)

    def __init__(self, *args, default_label: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["time_zone"].choices = [("", default_label)] + [(name, name) for name in zone_names()]


def time_zone_view(request: HttpRequest) -> HttpResponse:
    """Staff choose the zone their admin pages show times in (any staff member, for themselves only)."""
    browser = request.session.get(BROWSER_SESSION_KEY) or ""
    default = browser or settings.TIME_ZONE
    default_label = f"My browser's zone ({browser})" if browser else f"The default ({settings.TIME_ZONE})"
    current = StaffPreference.objects.filter(user=request.user).values_list("time_zone", flat=True).first() or ""
    form = TimeZoneForm(request.POST or None, initial={"time_zone": current}, default_label=default_label)
    if request.method == "POST" and form.is_valid():
        name = form.cleaned_data["time_zone"]
        choose_zone(request=request, time_zone=name)
        messages.success(request, f"Times are now shown in {name or default}.")
        return HttpResponseRedirect(reverse("staff_time_zone"))
    context = {
        **admin.site.each_context(request),
        "title": "Your time zone",
        "form": form,
        "zone_in_use": timezone.get_current_timezone_name(),
        "now": timezone.now(),
    }
    status = 400 if request.method == "POST" else 200  # a name that is not a zone: refused, nothing kept
    return TemplateResponse(request, "admin/staff/time_zone.html", context, status=status)


urlpatterns = [
    path("time-zone/", admin.site.admin_view(time_zone_view), name="staff_time_zone"),
]
