"""The store: the engine and transactions (`db`), the tables (`models`), and the statements that
move a message between statuses (`messages`). Knows no Celery."""
