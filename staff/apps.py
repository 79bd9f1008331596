"""The admin app, with `staff.sites.StaffAdminSite` as `admin.site` (see INSTALLED_APPS)."""
from django.contrib.admin.apps import AdminConfig


class StaffAdminConfig(AdminConfig):
    default_site = "staff.sites.StaffAdminSite"
