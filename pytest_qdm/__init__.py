"""pytest-qdm."""
