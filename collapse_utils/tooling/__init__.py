"""tooling layer."""
