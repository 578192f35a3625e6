"""Alerts: the message format, the outbox dispatcher and the sinks that deliver."""
