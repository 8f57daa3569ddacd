"""The admin HTTP API: the admin operations over HTTP, described by OpenAPI (docs/openapi.json)."""
