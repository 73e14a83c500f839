"""Data exchange hub: channels, connectors (HTTP, MLLP, batch), message store, routing, delivery, monitoring."""
