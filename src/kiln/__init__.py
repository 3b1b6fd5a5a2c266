"""kiln: container image automation with one task graph for laptops and GitLab CI."""

__version__ = "0.1.0"
