"""``taskqueue-worker``: the command, its supervisor of worker processes, and the RQ worker classes."""
