from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from lti_tool.views import jwks

from config import health
from gradesync import admin_support, metrics
from institutions.landing import landing
from institutions.tool_configuration import JWKS_PATH
from staff import time_zone_page

urlpatterns = [
    # For load balancers and on-call (config.health): liveness, and readiness of the dependencies.
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # For Prometheus (gradesync.metrics): a token or an allow-listed network, never public.
    path("metrics", metrics.metrics_view, name="metrics"),
    # Public: what this service is, with links to the admin, the sandbox LMS (when on) and the JWKS; "View site".
    path("", landing, name="landing"),
    # Support pages (why a grade did not sync, sync health): before the admin's own catch-alls.
    path("admin/gradesync/", include(admin_support.urlpatterns)),
    # A staff member's own time zone (staff.time_zone_page): before the admin's catch-alls too.
    path("admin/staff/", include(time_zone_page.urlpatterns)),
    path("admin/", admin.site.urls),
    path("", include("courseware.launch.urls")),
    path(JWKS_PATH, jwks, name="lti-jwks"),
    # LTI Dynamic Registration: the one-time link an LMS admin pastes (institutions.dynamic_registration).
    path("lti/register/", include("institutions.dynamic_registration.urls")),
    # Public: the Canvas developer key JSON of a registration (Canvas's "Enter URL" fetches it).
    path("", include("institutions.urls")),
    path("courseware/", include("courseware.urls")),
]
# Refusals inside the admin name the staff role needed; elsewhere Django's own 403 page.
handler403 = "staff.views.permission_denied"

if settings.SANDBOX_LMS:
    urlpatterns.append(path("sandbox-lms/", include("sandbox_lms.urls")))
# A database, cache or broker that does not answer: 503 with Retry-After, not a 500 (config.outages).
handler500 = "config.outages.server_error"
