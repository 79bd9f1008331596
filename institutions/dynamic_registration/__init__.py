"""LTI Dynamic Registration 1.0, the tool's side: one-time links for an institution (`invitations`),
the platform's openid configuration (`platform`), what we POST (`client_configuration`), and the
registration itself, saved whole or not at all (`services`). The LMS's window sees `views`.
"""
