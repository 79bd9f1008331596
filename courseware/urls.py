app_name = "courseware"
urlpatterns: list = []
