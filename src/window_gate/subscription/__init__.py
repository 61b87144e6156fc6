"""Subscriptions: Meta's webhooks relayed to the services behind the gate, and the gate's own events."""
