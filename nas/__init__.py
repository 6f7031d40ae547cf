"""nas: declarative, hardware-aware architecture search for vision transformers."""

__version__ = "0.1.0"
