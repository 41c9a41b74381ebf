"""compressor: make image-to-image GAN generators small and fast enough to ship."""

from .version import __version__

__all__ = ["__version__"]
