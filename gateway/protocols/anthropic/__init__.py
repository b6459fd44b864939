"""Anthropic's Messages API: requests read and checked, errors and stream events in its shape."""
