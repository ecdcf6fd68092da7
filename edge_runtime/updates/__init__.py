"""Over-the-air model updates on the device; :mod:`.protocol` describes the package."""
