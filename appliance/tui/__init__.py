"""The terminal interface (Textual). Build it with :func:`create_app`."""

from __future__ import annotations

from appliance.tui.app import ApplianceTUI, create_app, run_tui

__all__ = ["ApplianceTUI", "create_app", "run_tui"]
