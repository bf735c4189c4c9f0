"""The HTTP API: the Flask app, its routes, JSON errors, the OpenAPI document and the job service."""
