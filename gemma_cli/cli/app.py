"""The Typer application and the one place that turns errors into exit codes.

Exit status: 0 ok, 1 runtime error (one line on stderr), 2 usage error,
130 interrupted. A closed stdout (`| head`) ends quietly.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import typer

from gemma_cli import __version__
from gemma_cli.cli.commands import bench, chat, doctor, models, rpc_worker, run, serve, server_client
from gemma_cli.cli.output import quiet_stdout
from gemma_cli.errors import ExitCode, GemmaError
from gemma_cli.text_safety import clean_display

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


def _register(app: typer.Typer) -> None:
    """Every command, in `gemma --help` order. Importing the command modules is cheap:
    llama_cpp is imported only when a command runs the engine."""
    app.command(no_args_is_help=False)(run.run)
    app.command()(chat.chat)
    app.command("pull")(models.pull_cmd)
    app.command("list")(models.list_cmd)
    app.command("ls", hidden=True)(models.ls_cmd)
    app.command("show")(models.show_cmd)
    app.command("rm")(models.rm_cmd)
    app.command("create")(models.create_cmd)
    app.command("verify")(models.verify_cmd)
    app.command()(bench.bench)
    app.command()(doctor.doctor)
    app.command("serve")(serve.serve_cmd)
    app.command("ps")(server_client.ps_cmd)
    app.command("stop")(server_client.stop_cmd)
    app.command("rpc-worker")(rpc_worker.rpc_worker)
    app.command("__complete-models", hidden=True)(doctor.complete_models)


_register(app)


def _error_line(message: str) -> None:
    """The one stderr line every failure ends with (a hint rides on it: see GemmaError.line)."""
    from gemma_cli.cli.output import use_color

    prefix = "\x1b[31mError:\x1b[0m " if use_color(sys.stderr) else "Error: "
    sys.stderr.write(prefix + clean_display(message, 2000) + "\n")  # messages quote file metadata
    sys.stderr.flush()


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


def json_errors_requested(argv: list[str]) -> bool:
    """`gemma run --format json|jsonl`: scripts read stdout, so a failure goes there as JSON too."""
    if not argv or argv[0] != "run":
        return False
    args = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
    for i, arg in enumerate(args):
        value = None
        if arg in ("--format", "-f") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--format="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-f") and len(arg) > 2 and not arg.startswith("--"):
            value = arg[2:]
        if value in ("json", "jsonl"):
            return True
    return False


def _json_error(message: str, code: int) -> None:
    """One JSON object on stdout for scripts (the stderr line is printed as well)."""
    import json

    try:
        sys.stdout.write(json.dumps({"error": message.replace("\n", " "), "exit_code": int(code)}) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        quiet_stdout()


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so `finally` blocks remove temporary files."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, map every known failure to one line and an exit code."""
    import signal

    args = list(sys.argv[1:] if argv is None else argv)
    if _closed_streams():
        _error_line("standard output is closed (`>&-`): gemma has nowhere to print; redirect it to a file or /dev/null")
        sys.exit(ExitCode.ERROR)
    want_json = json_errors_requested(args)
    message: str | None = None
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main thread (tests calling main in a thread)
        pass
    try:
        code = app(args=argv, standalone_mode=False)
    except Terminated:
        sys.stderr.write("Terminated.\n")
        code, message = 128 + signal.SIGTERM, "terminated (SIGTERM)"
    except GemmaError as exc:
        message = exc.line()
        _error_line(message)
        code = exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        code, message = ExitCode.INTERRUPT, "interrupted"
    except BrokenPipeError:
        quiet_stdout()
        code = ExitCode.OK
    except typer.Abort:
        sys.stderr.write("Aborted.\n")
        code = ExitCode.INTERRUPT
    except typer.Exit as exc:
        code = exc.exit_code
    except Exception as exc:  # click usage errors and the unexpected
        usage_errors, click_errors = _click_exceptions()
        if isinstance(exc, usage_errors):
            exc.show()
            code = ExitCode.OK if type(exc).__name__ == "NoArgsIsHelpError" else ExitCode.USAGE
            message = getattr(exc, "message", None) or str(exc)
        elif isinstance(exc, click_errors):
            exc.show()
            code, message = exc.exit_code, getattr(exc, "message", None) or str(exc)
        elif isinstance(exc, OSError) and _disk_full(exc):
            message = f"no space left for {exc.filename or 'the output'}: {exc.strerror}"
            _error_line(message)
            code = ExitCode.ERROR
        elif isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and exc.filename:
            message = f"cannot write {exc.filename}: {exc.strerror} (a read-only or foreign model store? see GEMMA_MODELS)"
            _error_line(message)
            code = ExitCode.ERROR
        elif isinstance(exc, OSError) and exc.filename and exc.strerror:
            # The machine's state, not a bug: a file removed while in use (`gemma rm` during a load), a store
            # under /proc, a path component that is a file. Say which file and what the OS said.
            message = f"cannot use {exc.filename}: {exc.strerror}"
            if isinstance(exc, FileNotFoundError) and "blobs" in str(exc.filename):
                message += " (was the model removed while in use? `gemma list` shows what the store holds)"
            _error_line(message)
            code = ExitCode.ERROR
        else:
            if os.environ.get("GEMMA_DEBUG"):
                raise
            message = f"{type(exc).__name__}: {exc}; this is a bug in gemma-cli: rerun with GEMMA_DEBUG=1 for a traceback"
            _error_line(message)
            code = ExitCode.ERROR
    code = int(code) if isinstance(code, int) else ExitCode.OK.value
    if want_json and message is not None and code != ExitCode.OK:
        _json_error(message, code)
    sys.exit(code)


def _closed_streams() -> bool:
    """Python sets a standard stream to None when its descriptor was closed (`<&-`, `2>&-`).

    A closed stdin reads as empty input and a closed stderr as /dev/null; a closed stdout
    is refused before anything runs (True), rather than failing after the work is done.
    """
    if sys.stdin is None:
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    return sys.stdout is None


def _disk_full(exc: OSError) -> bool:
    """Out of space, quota or file size limit: the store's rule, so every writer agrees."""
    from gemma_cli.store.blobs import disk_full

    return disk_full(Path(exc.filename or "."), exc) is not None
