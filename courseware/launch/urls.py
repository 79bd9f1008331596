from django.urls import path

from institutions.tool_configuration import LAUNCH_PATH, LOGIN_PATH

from . import notices, views

urlpatterns = [
    path(f"{LOGIN_PATH}<uuid:registration_uuid>/", views.LoginView.as_view(), name="lti-login"),
    path(LAUNCH_PATH, views.LaunchView.as_view(), name="lti-launch"),
    path("lti/pick/", views.pick, name="lti-pick"),
    path("lti/notices/", notices.notice_handler, name="lti-notices"),
]
