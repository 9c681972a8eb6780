"""laggrow: grow Transformer language models and choose how with Landscape-Aware Growing."""

__version__ = "0.1.0"
