"""The proxy path: from a parsed request to an upstream answer relayed back (dispatch, breakers, relay)."""
