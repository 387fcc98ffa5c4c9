"""The control plane: admin listener, dashboard, JSON API, metrics endpoint."""
