"""`gemma run`: one-shot, pipe-friendly generation.

stdout carries only generated text, flushed per piece; everything else goes to
stderr. Piped stdin is read fully and placed before the positional prompt.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Callable, Iterable, List, Optional

import typer

from gemma_cli import limits
from gemma_cli.cli import engine_options as opt, remote
from gemma_cli.cli.interrupt import Cancellable, CancelOnSigint
from gemma_cli.cli.output import quiet_stdout, render_verbose_summary
from gemma_cli.errors import ExitCode, UsageError
from gemma_cli.text_safety import terminal_text

if TYPE_CHECKING:
    from gemma_cli.engine import Piece

FORMATS = ("text", "json", "jsonl")


def read_prompt(model: str | None, prompt: str | None) -> tuple[str | None, str | None]:
    """Combine piped stdin (first) with the positional prompt; pick out the model.

    A lone argument is the model when it looks like one (family:tag, a catalog
    name, a .gguf path), so a model that is missing is reported or pulled
    rather than sent to the default model as a prompt.
    """
    from gemma_cli.cli.text_input import clean_text, read_stdin
    from gemma_cli.registry.resolve import looks_like_model

    model = clean_text(model) if model is not None else None
    prompt = clean_text(prompt) if prompt is not None else None
    if model is not None and prompt is None and not looks_like_model(model):
        model, prompt = None, model
    parts: list[str] = []
    if not sys.stdin.isatty():
        piped = read_stdin()
        if piped.strip():
            parts.append(piped.rstrip("\n"))
    if prompt:
        parts.append(prompt)
    return model, "\n\n".join(parts) if parts else None


def run(
    model: Annotated[Optional[str], typer.Argument(help="Model name (default gemma3:270m) or a .gguf path.", show_default=False)] = None,
    prompt: Annotated[Optional[str], typer.Argument(help="Prompt text; piped stdin is placed before it.", show_default=False)] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the prompt as is, without the chat template (always so for models without one).")] = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="Output: text, json (one object) or jsonl (a line per piece).")] = "text",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print timings and draft statistics to stderr.")] = False,
    stop: Annotated[Optional[List[str]], typer.Option("--stop", help="Stop at this string (repeatable).")] = None,
    draft: opt.Draft = "auto",
    draft_tokens: opt.DraftTokens = None,
    temperature: opt.Temperature = opt.DEFAULT_TEMPERATURE,
    top_k: opt.TopK = opt.DEFAULT_TOP_K,
    top_p: opt.TopP = opt.DEFAULT_TOP_P,
    min_p: opt.MinP = 0.0,
    seed: opt.Seed = None,
    max_tokens: opt.MaxTokens = 512,
    ctx: opt.Ctx = 4096,
    gpu_layers: opt.GpuLayers = 0,
    threads: opt.Threads = None,
    rpc: opt.Rpc = None,
    tensor_split: opt.TensorSplit = None,
    host: remote.HostOpt = None,
) -> None:
    """Generate once from PROMPT (and/or piped stdin) and print only the text to stdout.

    Examples: gemma run "Why is the sky blue?" | cat notes.txt | gemma run gemma3:270m "Summarize:"
    """
    from gemma_cli.cli.text_input import clean_text
    from gemma_cli.engine import SamplingParams

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    opt.check_generation(max_tokens, temperature, top_k, top_p, min_p)
    sampling = SamplingParams(temperature, top_k, top_p, min_p, limits.check_seed(seed))
    model, text = read_prompt(model, prompt)
    system = clean_text(system) if system is not None else None
    stop = [clean_text(x) for x in stop] if stop else None
    server = remote.client(host, model)
    if text is None:
        if model is not None and server is not None:  # an unknown (or unpulled) model is the first thing to report
            remote.describe(server, model)
        elif model is not None:
            opt.resolve(model)
        raise UsageError("no prompt: give one as an argument or pipe text in, e.g. gemma run gemma3:270m \"Why is the sky blue?\"")
    if server is not None:
        if raw and system is not None:  # the server's raw ignores `system` (as Ollama's): prefix it as run does here
            text, system = f"{system}\n\n{text}", None
        body = {"model": remote.model_name(model), "prompt": text, "raw": raw, "options": remote.options(
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, max_tokens=max_tokens,
            stop=stop, draft=draft, draft_tokens=draft_tokens, ctx=ctx)}
        if system is not None:
            body["system"] = system
        generation = remote.start(server, "/api/generate", body)
        try:
            _write(generation, generation, fmt, verbose, lambda: generation.model, lambda: generation.load_s)
        finally:
            generation.close()
        return
    pair = opt.resolve(model, pull_missing=True)
    choice = opt.EngineChoice(draft, draft_tokens, ctx, gpu_layers, threads, rpc, tensor_split)
    engine = opt.open_engine(pair, choice)
    try:
        if verbose and engine.placement is not None:
            for line in engine.placement.describe():
                sys.stderr.write(f"placement: {line}\n")
        tokens = engine.prompt_tokens(text, system=system, raw=raw)
        generation = engine.generate(tokens, max_tokens=max_tokens, sampling=sampling, stop=stop or ())
        _write(generation, engine, fmt, verbose, lambda: pair.name, lambda: engine.load_seconds)
    finally:
        engine.close()


def _write(generation: Iterable[Piece], canceller: Cancellable, fmt: str, verbose: bool,
           name: Callable[[], str], load_s: Callable[[], float]) -> None:
    """Stream the pieces to stdout in `fmt`, then the summary: the same for in-process and client mode.

    `generation` is the engine's Generation or a RemoteGeneration (both end with
    `.result`); `name` and `load_s` are read after the last piece.
    """
    try:
        out = sys.stdout
        shown = terminal_text if fmt == "text" and out.isatty() else str  # a terminal never gets escape sequences
        with CancelOnSigint(canceller, second_interrupts=True) as sig:
            for piece in generation:
                if fmt == "text":
                    out.write(shown(piece.text))
                    out.flush()
                elif fmt == "jsonl":
                    out.write(json.dumps({"text": piece.text, "tokens": piece.n_tokens, "drafted": piece.n_drafted}) + "\n")
                    out.flush()
        result = generation.result  # type: ignore[attr-defined]
        assert result is not None
        summary = {
            "model": name(),
            "stop_reason": result.stop_reason.value,
            "load_s": load_s(),
            **result.stats.as_dict(),
        }
        if fmt == "text" and out.isatty() and result.text and not result.text.endswith("\n"):
            out.write("\n")
        elif fmt == "json":
            out.write(json.dumps({"text": result.text, **summary}) + "\n")
        elif fmt == "jsonl":
            out.write(json.dumps({"done": True, **summary}) + "\n")
        out.flush()
        if verbose:
            render_verbose_summary(result.stats, load_s())
        if sig.fired:
            raise typer.Exit(ExitCode.INTERRUPT)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, successfully
        quiet_stdout()
        raise typer.Exit(ExitCode.OK) from None
