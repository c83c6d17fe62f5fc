"""What starts the service or answers the outside world: the CLI, the HTTP API, Celery tasks, the scheduler tick."""
