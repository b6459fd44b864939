"""gunicorn's configuration for running the gateway yourself: `gunicorn -c python:gateway.gunicorn_conf`.

The settings come from the environment as `gateway serve` reads them (GATEWAY_HOST, GATEWAY_PORT, GATEWAY_WORKERS,
GATEWAY_DRAIN_TIMEOUT, ...), with the same worker class, timeouts and hooks; a gunicorn command-line option set
after `-c` wins over them. Being gunicorn's config file, this module does its work when imported.
"""

from gateway.server.workers import check_shared_state, server_options
from gateway.settings import Settings

_settings = Settings()
if _settings.workers > 1:
    check_shared_state(_settings)  # raises: several workers must share their state through Redis

globals().update(server_options(_settings))
wsgi_app = "gateway.server.workers:create_worker_app()"
