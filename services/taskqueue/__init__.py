"""taskqueue: an asynchronous task queue service (Flask generator, RQ workers, Redis)."""

__version__ = "0.1.0"
