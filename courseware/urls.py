"""The player (framed in the LMS) and the instructor's scheduling page."""
from django.urls import path

from . import views

app_name = "courseware"
urlpatterns = [
    path("play/<int:link_id>/", views.play, name="play"),
    path("play/<int:link_id>/start/", views.start, name="start"),
    path("play/<int:link_id>/captions.vtt", views.captions, name="captions"),
    path("play/<int:link_id>/attempts/<int:attempt_id>/", views.attempt_result, name="attempt"),
    path("play/<int:link_id>/attempts/<int:attempt_id>/submit/", views.submit, name="submit"),
    path("play/<int:link_id>/attempts/<int:attempt_id>/presence/", views.presence, name="presence"),
    path("schedule/", views.schedule, name="schedule"),
    path("instructor-tools/", views.instructor_tools, name="instructor_tools"),
    path("grade-sync/<int:course_id>/", views.grade_sync, name="grade_sync"),
    path("grade-sync/<int:course_id>/progress.json", views.grade_sync_progress, name="grade_sync_progress"),
]
