"""Redis as taskqueue uses it: connections, RQ's records (serializer, registries), job outcomes."""
