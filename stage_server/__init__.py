"""Stage server."""
