"""The one root of quantgate's exceptions.

Every error quantgate raises on purpose derives from `QuantgateError`, so the pytest layer can turn any of them
into one clear failure line (and a caller of the library can catch them all) without listing classes that drift
as modules are added. Each class keeps its older second base (ValueError, RuntimeError) so existing
``except ValueError`` callers keep working. Messages name the culprit: the file, config, figure or value.
"""

from __future__ import annotations


class QuantgateError(Exception):
    """Something quantgate checked is wrong; the message names the file, config or value and, where it can,
    the fix."""
