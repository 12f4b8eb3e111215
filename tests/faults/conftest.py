"""Fault-injection tests reuse the integration harness: real processes on loopback."""

from tests.integration.conftest import backend  # noqa: F401  (the fixture, shared)
