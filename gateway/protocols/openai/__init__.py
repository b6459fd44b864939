"""OpenAI's wire format: request bodies, usage counts and replayed streams."""
