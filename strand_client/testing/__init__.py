"""A faithful in-process fake of the Strand platform, for tests and the demo."""

from strand_client.testing.server import FakeStrandServer, serve_forever
from strand_client.testing.state import DEFAULT_API_KEY, FakeOptions

__all__ = ["DEFAULT_API_KEY", "FakeOptions", "FakeStrandServer", "serve_forever"]
