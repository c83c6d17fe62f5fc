"""The service's hands on the outside: database, Redis stream, provider channels, settings, logs, metrics, retries."""
