"""Transitional: the names resync still reaches as `services.<name>` while it is being split; this
file goes once resync names the modules that hold them (line_items, sender).
"""
from .line_items import line_item_for as _line_item_for  # noqa: F401
from .sender import wake_senders  # noqa: F401
