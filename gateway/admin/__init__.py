"""Operating the gateway: keys, usage and routes, the same operations for the admin API and the console."""
