"""The showcase adapter: small tools demonstrating every bridge feature."""

from __future__ import annotations

from .adapter import ShowcaseAdapter

__all__ = ["ShowcaseAdapter"]
