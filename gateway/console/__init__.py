"""The web console at /ui: server-rendered pages over the same operations as the admin API."""
