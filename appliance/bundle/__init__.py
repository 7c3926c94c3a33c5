"""Offline bundles: build (wheels, models, knowledge bases, signed manifest, SBOM), verify,
install (``install.sh`` on the target) and ``appliance doctor``.

Submodules are imported on use: ``verify`` runs with the standard library alone (it is the
checker install.sh runs before anything is installed).
"""
