"""gemma-cli: run Gemma models locally with lossless speculative decoding."""

__version__ = "0.1.0"
