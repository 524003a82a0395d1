"""slimmer: make existing container images smaller without rebuilding them."""

__version__ = "0.1.0"
