"""The admin app, with `staff.sites.StaffAdminSite` as `admin.site`, and staff's own app (their preferences)."""
from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class StaffAdminConfig(AdminConfig):
    default_site = "staff.sites.StaffAdminSite"


class StaffConfig(AppConfig):
    name = "staff"
    label = "staff"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import time_zones  # noqa: F401 - connects its sign-in receiver (the staff member's zone)
