"""RabbitMQ and Celery's view of it: the app object (`app`), its settings (`config`), and the
topology (`topology`: exchange, quorum queues, DLX/DLQ, delayed delivery)."""
