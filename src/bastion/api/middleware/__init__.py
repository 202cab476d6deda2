"""Pure ASGI middleware (streaming-safe; no BaseHTTPMiddleware)."""
