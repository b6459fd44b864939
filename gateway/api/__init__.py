"""The HTTP surface: the handlers of every route, the request-context middleware, and the helpers they share."""
