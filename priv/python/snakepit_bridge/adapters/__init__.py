"""Adapters shipped with ``snakepit_bridge``."""
