"""``taskqueue-generator``: gunicorn serving the API, and its worker classes."""
