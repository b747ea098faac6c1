"""Fixtures for the plugin tests live in plugin_support (importable by name from the tests too)."""

from plugin_support import qg  # noqa: F401
