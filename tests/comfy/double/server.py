"""Double of ComfyUI ``server.py``: ``PromptServer.instance.send_sync`` records its messages."""

from __future__ import annotations


class PromptServer:
    instance: PromptServer = None  # set by comfy_double.configure (ComfyUI sets it when the server starts)

    def __init__(self):
        self.messages: list[tuple[str, dict, str | None]] = []
        self.client_id = None
        self.last_node_id = None

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data, sid))


PromptServer.instance = PromptServer()
