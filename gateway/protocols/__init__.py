"""Wire formats, one module per protocol: requests parsed and answers rendered, with no IO of their own."""
