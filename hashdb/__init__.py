"""hashdb: a consortium database of perceptual hashes of known illegal media."""

__version__ = "0.1.0"
