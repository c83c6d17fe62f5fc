"""The stories of the service: processing events, routing, alerting, claims, operator commands, reports."""
