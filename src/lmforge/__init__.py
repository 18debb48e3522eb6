"""lmforge: pre-training adjustment and performance optimization of causal language models, as a DVC pipeline."""

__version__ = "0.1.0"
