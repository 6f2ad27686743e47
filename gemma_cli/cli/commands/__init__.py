"""One module per command group: plain functions, registered on the Typer app by `gemma_cli.cli.app`."""
