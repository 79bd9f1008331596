from django.urls import path

from . import notice_views, registration_views, views

app_name = "sandbox_lms"

urlpatterns = [
    path("", views.home, name="home"),
    path("act-as/", views.act_as, name="act-as"),
    path("courses/<int:pk>/", views.course, name="course"),
    path("courses/<int:pk>/gradebook/", views.gradebook, name="gradebook"),
    path("courses/<int:pk>/deep-link/", views.deep_link, name="deep-link"),
    path("courses/<int:pk>/grade-sync/", views.course_navigation, name="course-navigation"),
    path("courses/<int:pk>/return/", views.launch_return, name="return"),
    path("courses/<int:pk>/copy/", views.copy, name="copy"),
    path("courses/<int:pk>/move/", views.move, name="move"),
    path("links/<int:pk>/launch/", views.launch, name="launch"),
    path("registrations/<int:pk>/", views.registration, name="registration"),
    path("log/", views.request_log, name="log"),
    # Dynamic Registration: the admin's "Add a tool by link", the openid configuration, the registration endpoint.
    path("tools/add/", registration_views.add_tool, name="add-tool"),
    path("tools/<int:pk>/enable/", registration_views.enable, name="enable-tool"),
    path("deployments/<int:pk>/course/", registration_views.course_for_tool, name="course-for-tool"),
    path(".well-known/openid-configuration", registration_views.openid_configuration, name="openid-configuration"),
    path("register/", registration_views.register, name="register"),
    # The platform's endpoints.
    path("auth/", views.authorize, name="auth"),
    path("jwks/", views.jwks, name="jwks"),
    path("token/", views.token, name="token"),
    path("deep-linking/<uuid:launch>/return/", views.deep_linking_return, name="deep-linking-return"),
    path("api/courses/<int:course_pk>/lineitems", views.line_items, name="lineitems"),
    path("api/courses/<int:course_pk>/memberships", views.memberships, name="memberships"),
    path("api/lineitems/<int:pk>/lineitem", views.line_item, name="lineitem"),
    path("api/lineitems/<int:pk>/lineitem/scores", views.scores, name="scores"),
    path("api/lineitems/<int:pk>/lineitem/results", views.results, name="results"),
    path("api/lti/registrations/<int:pk>/notice-handlers", notice_views.notice_handlers, name="notice-handlers"),
]
