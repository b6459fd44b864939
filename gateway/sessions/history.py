"""Bounding a conversation's stored history: the newest whole turns that fit, system messages always kept. Pure.

Total over any JSON: a stored message may hold anything an upstream or an older release wrote (a `role` that is an
object, tool call ids that are arrays), and bounding runs after a turn is answered, where raising loses the turn.
"""

from __future__ import annotations

from typing import Any

from gateway.protocols.openai.usage import estimate_tokens, text_chars

# Tokens a message costs beyond its text (role, separators), as OpenAI's chat format adds per message.
MESSAGE_OVERHEAD_TOKENS = 4
# Instructions the gateway never drops: a conversation without them would change behaviour, not just lose context.
_PINNED_ROLES = frozenset({"system", "developer"})


def estimate_message_tokens(message: dict[str, Any]) -> int:
    """Estimated tokens of one chat message: its text, refusal and tool calls' names and arguments, plus overhead."""
    if not isinstance(message, dict):
        return estimate_tokens(text_chars(message)) + MESSAGE_OVERHEAD_TOKENS
    chars = text_chars(message.get("content"))
    refusal = message.get("refusal")
    if isinstance(refusal, str):
        chars += len(refusal)
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                chars += sum(len(v) for v in (function.get("name"), function.get("arguments")) if isinstance(v, str))
    return estimate_tokens(chars) + MESSAGE_OVERHEAD_TOKENS


def bound(messages: list[dict[str, Any]], *, max_messages: int | None, max_tokens: int | None) -> list[dict[str, Any]]:
    """The newest part of `messages` within both bounds (`None`: no bound), dropping the oldest whole turns first.

    A turn starts at a `user` message and holds everything up to the next one (assistant replies, tool calls, tool
    results); messages before the first `user` message form a leading partial turn, the first to go. `system` and
    `developer` messages are always kept where they stand and count against the bounds; when they alone exceed a
    bound, every turn is dropped. The newest turn is dropped too when it does not fit: a bound is a bound, and a
    caller that must send something has the client's new messages anyway. A turn holding a tool result whose call is
    not earlier in that turn (a history cut mid-turn) is dropped with every older turn, because an upstream rejects a
    tool result without its call; so the kept turns are always a contiguous newest run.
    """
    for name, limit in (("max_messages", max_messages), ("max_tokens", max_tokens)):
        if limit is not None and limit < 0:
            raise ValueError(f"{name} must not be negative, got {limit}")
    turns = _turns(messages)
    count = sum(1 for message in messages if _is_pinned(message))
    # Estimating walks every message's text: only when a token bound asks for it (most agents bound by count).
    weigh = max_tokens is not None
    tokens = sum(estimate_message_tokens(message) for message in messages if weigh and _is_pinned(message))
    cut = len(messages)  # index of the first kept non-pinned message
    for start, members in reversed(turns):
        count += len(members)
        tokens += sum(estimate_message_tokens(message) for message in members) if weigh else 0
        fits = (max_messages is None or count <= max_messages) and (max_tokens is None or tokens <= max_tokens)
        if not fits or not _answers_its_own_calls(members):
            break
        cut = start
    return [message for index, message in enumerate(messages) if index >= cut or _is_pinned(message)]


def _role(message: dict[str, Any]) -> str | None:
    """The message's role; None when it has none that is a string."""
    role = message.get("role") if isinstance(message, dict) else None
    return role if isinstance(role, str) else None


def _is_pinned(message: dict[str, Any]) -> bool:
    return _role(message) in _PINNED_ROLES


def _turns(messages: list[dict[str, Any]]) -> list[tuple[int, list[dict[str, Any]]]]:
    """The non-pinned messages grouped into turns, each with the index in `messages` where it starts."""
    turns: list[tuple[int, list[dict[str, Any]]]] = []
    for index, message in enumerate(messages):
        if _is_pinned(message):
            continue
        if _role(message) == "user" or not turns:
            turns.append((index, []))
        turns[-1][1].append(message)
    return turns


def _answers_its_own_calls(turn: list[dict[str, Any]]) -> bool:
    """Whether every tool result in `turn` follows an assistant message of the turn that made its call."""
    called: set[str] = set()
    for message in turn:
        role = _role(message)
        if role == "assistant" and isinstance(message.get("tool_calls"), list):
            called.update(
                call["id"]
                for call in message["tool_calls"]
                if isinstance(call, dict) and isinstance(call.get("id"), str)
            )
        elif role == "tool":
            # Only string ids match: a call whose id is anything else cannot be answered.
            answered = message.get("tool_call_id")
            if not isinstance(answered, str) or answered not in called:
                return False
    return True
