from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from lti_tool.views import OIDCLoginInitView, jwks

from institutions.tool_configuration import JWKS_PATH, LOGIN_PATH

urlpatterns = [
    path("admin/", admin.site.urls),
    path(f"{LOGIN_PATH}<uuid:registration_uuid>/", OIDCLoginInitView.as_view(), name="lti-login"),
    path(JWKS_PATH, jwks, name="lti-jwks"),
    path("courseware/", include("courseware.urls")),
]
if settings.SANDBOX_LMS:
    urlpatterns.append(path("sandbox-lms/", include("sandbox_lms.urls")))
