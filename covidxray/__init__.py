"""covidxray: chest X-ray classification service (covid, pneumonia, normal)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covidxray.version import __version__

__all__ = ["__version__", "create_app"]

if TYPE_CHECKING:
    from covidxray.web.app import create_app


def __getattr__(name: str) -> Any:
    """Import the web stack only when `create_app` is used (training needs none of it)."""
    if name == "create_app":
        from covidxray.web.app import create_app

        return create_app
    raise AttributeError(name)
