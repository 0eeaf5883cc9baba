"""covidxray: chest X-ray classification service (covid, pneumonia, normal)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "create_app"]

if TYPE_CHECKING:
    from .app import create_app


def __getattr__(name: str) -> Any:
    """Import the web stack only when `create_app` is used (training needs none of it)."""
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
