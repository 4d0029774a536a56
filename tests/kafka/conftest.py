"""Kafka tests use the session broker and the `reader` fixture from tests/conftest.py."""
