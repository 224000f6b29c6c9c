"""Operating bday: status, health probes, replay, the dead-letter queue, the state exporter, and
the migration runner."""
