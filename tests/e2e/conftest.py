"""Fixtures shared by the end-to-end tests: the local provider server and an environment pointing at it."""

from tests.e2e.test_alert_batches import queued  # noqa: F401
from tests.e2e.test_alerts_flow import alert_env, client, providers  # noqa: F401
from tests.e2e.test_voice_calls import app_client, player, voice_env  # noqa: F401
