"""The Typer application and the one place that turns errors into exit codes.

Exit status: 0 ok, 1 runtime error (one line on stderr), 2 usage error,
130 interrupted. A closed stdout (`| head`) ends quietly.
"""

from __future__ import annotations

import os
import sys

import typer

from gemma_cli import __version__
from gemma_cli.errors import GemmaError
from gemma_cli.text_safety import clean_display

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPT = 0, 1, 2, 130

app = typer.Typer(
    name="gemma",
    help="Run Gemma models locally, fast: llama.cpp with lossless speculative decoding.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gemma-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", help="Print the version and exit.", callback=_version, is_eager=True),
) -> None:
    """Run Gemma models locally, fast: llama.cpp with lossless speculative decoding."""


def _register() -> None:
    # Each module adds its commands to `app`; importing them is cheap
    # (llama_cpp is imported only when a command runs the engine).
    from gemma_cli.cli.commands import run  # noqa: F401

    for optional in ("chat", "models", "bench", "doctor"):
        try:
            __import__(f"gemma_cli.cli.commands.{optional}")
        except ModuleNotFoundError as exc:  # a command group not built yet
            if exc.name != f"gemma_cli.cli.commands.{optional}":
                raise


def _error_line(message: str, hint: str | None = None) -> None:
    prefix = "Error: " if os.environ.get("NO_COLOR") or not sys.stderr.isatty() else "\x1b[31mError:\x1b[0m "
    sys.stderr.write(prefix + clean_display(message, 2000) + "\n")  # messages quote file metadata
    if hint:
        sys.stderr.write(hint + "\n")
    sys.stderr.flush()


def quiet_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so interpreter shutdown does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Typer >= 0.2x vendors its own click; accept both copies' exception types."""
    import click

    usage: tuple[type, ...] = (click.exceptions.UsageError,)
    errors: tuple[type, ...] = (click.ClickException,)
    try:
        from typer._click import exceptions as vendored

        usage += (vendored.UsageError,)
        errors += (vendored.ClickException,)
    except ImportError:
        pass
    return usage, errors


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, map every known failure to one line and an exit code."""
    try:
        code = app(args=argv, standalone_mode=False)
    except GemmaError as exc:
        _error_line(str(exc), exc.hint)
        code = exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        code = EXIT_INTERRUPT
    except BrokenPipeError:
        quiet_stdout()
        code = EXIT_OK
    except typer.Abort:
        sys.stderr.write("Aborted.\n")
        code = EXIT_INTERRUPT
    except typer.Exit as exc:
        code = exc.exit_code
    except Exception as exc:  # click usage errors and the unexpected
        usage_errors, click_errors = _click_exceptions()
        if isinstance(exc, usage_errors):
            exc.show()
            code = 0 if type(exc).__name__ == "NoArgsIsHelpError" else EXIT_USAGE
        elif isinstance(exc, click_errors):
            exc.show()
            code = exc.exit_code
        elif isinstance(exc, OSError) and exc.errno in (27, 28, 122):  # EFBIG, ENOSPC, EDQUOT
            _error_line(f"no space left for {exc.filename or 'the output'}: {exc.strerror}")
            code = EXIT_ERROR
        else:
            if os.environ.get("GEMMA_DEBUG"):
                raise
            _error_line(f"{type(exc).__name__}: {exc}", "This is a bug in gemma-cli; rerun with GEMMA_DEBUG=1 for a traceback.")
            code = EXIT_ERROR
    sys.exit(code if isinstance(code, int) else EXIT_OK)


_register()  # last: command modules import names defined above
