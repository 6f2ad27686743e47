"""`gemma run`: one-shot, pipe-friendly generation.

stdout carries only generated text, flushed per piece; everything else goes to
stderr. Piped stdin is read fully and placed before the positional prompt.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, List, Optional

import typer

from gemma_cli import limits
from gemma_cli.cli import engine_options as opt
from gemma_cli.cli.interrupt import CancelOnSigint
from gemma_cli.cli.output import quiet_stdout, render_verbose_summary
from gemma_cli.errors import ExitCode, UsageError

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
    if text is None:
        if model is not None:
            opt.resolve(model)  # an unknown (or unpulled) model is the first thing to report
        raise UsageError("no prompt: give one as an argument or pipe text in, e.g. gemma run gemma3:270m \"Why is the sky blue?\"")
    pair = opt.resolve(model, pull_missing=True)
    choice = opt.EngineChoice(draft, draft_tokens, ctx, gpu_layers, threads)
    engine = opt.open_engine(pair, choice)
    try:
        tokens = engine.prompt_tokens(text, system=system, raw=raw)
        generation = engine.generate(tokens, max_tokens=max_tokens, sampling=sampling, stop=stop or ())
        out = sys.stdout
        with CancelOnSigint(engine, second_interrupts=True) as sig:
            for piece in generation:
                if fmt == "text":
                    out.write(piece.text)
                    out.flush()
                elif fmt == "jsonl":
                    out.write(json.dumps({"text": piece.text, "tokens": piece.n_tokens, "drafted": piece.n_drafted}) + "\n")
                    out.flush()
        result = generation.result
        assert result is not None
        summary = {
            "model": pair.name,
            "stop_reason": result.stop_reason.value,
            "load_s": engine.load_seconds,
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
            render_verbose_summary(result.stats, engine.load_seconds)
        if sig.fired:
            raise typer.Exit(ExitCode.INTERRUPT)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, successfully
        quiet_stdout()
        raise typer.Exit(ExitCode.OK) from None
    finally:
        engine.close()
