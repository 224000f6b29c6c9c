"""Telemetry: every Prometheus metric bday records (`metrics`) and the log format with email
masking (`logs`)."""
