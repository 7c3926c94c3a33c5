"""Errors of the bundle commands."""

from __future__ import annotations

from appliance.errors import ApplianceError

__all__ = ["BundleError", "DoctorError"]


class BundleError(ApplianceError):
    """A bundle cannot be built, is not intact, or is not signed as required."""

    title = "Bundle error"
    exit_code = 6


class DoctorError(ApplianceError):
    """One or more checks of ``appliance doctor`` failed."""

    title = "Doctor"
    exit_code = 7
