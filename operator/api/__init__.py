"""The gateway's REST APIs: an app factory and one router module per API family."""

from .app import create_app
from .common import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]
