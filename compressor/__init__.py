"""compressor: make image-to-image GAN generators small and fast enough to ship."""

__version__ = "0.1.0"
