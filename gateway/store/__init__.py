"""Where keys and usage live: in the process (persisted under GATEWAY_STATE_DIR) or in Redis."""
