"""The package version (pyproject.toml repeats it; the Colab install lines pin the tag v<version>)."""
__version__ = "0.1.0"
