"""Errors of the bundle commands (defined in :mod:`appliance.errors`, the one tree)."""

from appliance.errors import BundleError, DoctorError

__all__ = ["BundleError", "DoctorError"]
