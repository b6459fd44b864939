"""The hop to the providers: one shared aiohttp session, request building, exception mapping."""
