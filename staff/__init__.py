"""Staff sign-in: the admin site with a second factor, login throttling, idle timeout and the 403 page.

Depends on Django, django-otp, django-axes and `institutions.roles` only.
"""
