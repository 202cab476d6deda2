"""HTTP API: ASGI app factory, routes, wire schemas and middleware."""
