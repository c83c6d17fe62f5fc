"""The speed benchmark of SPEC §9: ``python -m bench.run [--quick] [--only NAME]``.

It starts everything it measures (a private redis-server, a database of its
own, Celery worker processes, the scheduler, a local Twilio/SendGrid) and
stops all of it when it ends, however it ends.
"""
