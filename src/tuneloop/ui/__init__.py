"""The web UI: server-rendered pages over the store (``tuneloop ui``, or mounted in the gateway).

``create_ui_app()`` builds the ASGI app; ``mount_ui(app)`` serves it under ``/ui`` of another app.
"""

from tuneloop.ui.app import create_ui_app, mount_ui

__all__ = ["create_ui_app", "mount_ui"]
