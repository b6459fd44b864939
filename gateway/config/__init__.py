"""The route config: agents read from YAML, the routing table that matches models, and its reloading."""
