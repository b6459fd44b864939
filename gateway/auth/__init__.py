"""Who is calling: virtual keys (records, hashing) and the authenticator that resolves them per request."""
