"""Delivery: the email-service client (`sender`, the one place that calls it), the shared circuit
breaker (`breaker`), and one attempt at one message (`attempt`). Plain Python, no Celery."""
