"""Backends that implement :class:`spare_core.backend.DiffusionBackend`."""
