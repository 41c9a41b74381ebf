"""The toolkit's version: read by the command line (``compress --version``) and written into every exported file's metadata."""

__version__ = "0.1.0"
