"""Completion webhooks: which URLs may receive them (guard.py, standard library only, so config.py checks the
list at start) and sending them from the exporter (delivery.py); their records in Redis are store/outbox.py."""
