from django.urls import include, path

urlpatterns = [path("sandbox-lms/", include("sandbox_lms.urls"))]
