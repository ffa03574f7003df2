"""HTTP API: translates requests to Service calls and back, nothing more."""

from api.app import create_app

__all__ = ["create_app"]
