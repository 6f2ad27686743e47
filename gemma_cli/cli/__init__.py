"""Command-line layer: thin commands that parse, call one service, and render."""
