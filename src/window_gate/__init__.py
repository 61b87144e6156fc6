"""window_gate: the WhatsApp customer-service-window gatekeeper."""
