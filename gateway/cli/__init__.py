"""The `gateway` command: serve, check, keys, completion, and the admin API client the key commands use."""
