"""Anthropic's Messages API behind the seam (protocols/wire.py), as a front door."""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError
from gateway.protocols.anthropic import messages


class AnthropicDoor:
    name = "anthropic"

    def read(self, endpoint: messages.Endpoint, body: dict[str, Any]) -> tuple[str, bool]:
        return messages.read(endpoint, body)

    def error_body(self, error: GatewayError) -> bytes:
        return messages.error_body(error)

    def error_event(self, error: GatewayError) -> bytes:
        return messages.error_event(error)


ANTHROPIC = AnthropicDoor()
