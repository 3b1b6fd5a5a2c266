"""kiln's example backend: a small HTTP API built into the ``backend`` image."""

__version__ = "0.1.0"
