"""Browser tests reuse the in-process balancer of the integration tests."""

from tests.integration.conftest import balancer  # noqa: F401
