from django.urls import path

from .views import register_by_link

# Mounted by config/urls.py beside the other lti/ paths: lti/register/<token>/.
urlpatterns = [
    path("<str:token>/", register_by_link, name="dynamic-registration"),
]
