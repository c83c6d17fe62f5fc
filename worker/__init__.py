"""leadrouter shell: Celery app and tasks, database, channels, HTTP API, CLI."""
