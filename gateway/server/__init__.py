"""Running the app: one uvicorn process that drains on SIGTERM, or gunicorn's arbiter over several."""
