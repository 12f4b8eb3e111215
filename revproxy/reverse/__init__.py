"""reverse package."""
