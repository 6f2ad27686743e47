"""`gemma chat`: an interactive conversation with live speed and draft statistics."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from gemma_cli import config, limits
from gemma_cli.cli import engine_options as opt, remote


def base_model_note(name: str) -> str:
    """What chatting with a base model is, and how to get an assistant instead."""
    return (
        f"note: {name} is a base model (pre-trained, not instruction-tuned): it continues text, so its replies "
        "continue a User:/Assistant: transcript and end at the next user line. For an assistant, use an "
        "instruction-tuned model, e.g. gemma create gemma3-it:270m --target "
        "hf://unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf, or gemma pull gemma4:e2b"
    )


def chat(
    model: Annotated[Optional[str], typer.Argument(help="Model name (default gemma3:270m) or a .gguf path.", show_default=False)] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt (change it later with /set system).")] = None,
    draft: opt.Draft = "auto",
    draft_tokens: opt.DraftTokens = None,
    temperature: opt.Temperature = opt.DEFAULT_TEMPERATURE,
    top_k: opt.TopK = opt.DEFAULT_TOP_K,
    top_p: opt.TopP = opt.DEFAULT_TOP_P,
    min_p: opt.MinP = 0.0,
    seed: opt.Seed = None,
    max_tokens: opt.MaxTokens = 1024,
    ctx: opt.Ctx = 4096,
    gpu_layers: opt.GpuLayers = 0,
    threads: opt.Threads = None,
    rpc: opt.Rpc = None,
    tensor_split: opt.TensorSplit = None,
    host: remote.HostOpt = None,
) -> None:
    """Chat with a model: streamed replies, a live tokens/s and draft-acceptance line, /help for commands.

    Ctrl-C stops a reply, Ctrl-D or /bye leaves. Example: gemma chat gemma3:270m --system "Be brief."
    """
    from gemma_cli.chat import Conversation
    from gemma_cli.cli.chat_input import make_reader
    from gemma_cli.cli.output import dumb_terminal, use_color
    from gemma_cli.cli.repl import ChatRepl, ChatSettings
    from gemma_cli.engine import SamplingParams

    opt.check_generation(max_tokens, temperature, top_k, top_p, min_p)
    sampling = SamplingParams(temperature, top_k, top_p, min_p, limits.check_seed(seed))
    if system is not None:
        from gemma_cli.cli.text_input import clean_text

        system = clean_text(system)
    choice = opt.EngineChoice(draft, draft_tokens, ctx, gpu_layers, threads, rpc, tensor_split)
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    color = use_color(sys.stdout) and use_color(sys.stderr)
    server = remote.client(host, model)
    repl_class = ChatRepl
    if server is not None:
        from gemma_cli.cli.remote_chat import RemoteChatRepl, ServerModel, pair_from_info

        remote.options(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, max_tokens=max_tokens,
                       stop=None, draft=draft, draft_tokens=draft_tokens, ctx=ctx)  # checks, as in-process
        show = remote.ensure_pulled(server, remote.model_name(model))
        with server.reading("/api/show"):
            pair = pair_from_info(show["gemma"]["describe"])
            if terminal:
                sys.stderr.write(f"loading {pair.name}…\r")
                sys.stderr.flush()
            engine = ServerModel(server, pair, show, opt.draft_config(pair, choice, "chat"))
        repl_class = RemoteChatRepl
        engine.load(pair.name, ctx if ctx != 4096 else None)
    else:
        pair = opt.resolve(model, pull_missing=True)
        if terminal:
            sys.stderr.write(f"loading {pair.name}…\r")
            sys.stderr.flush()
        engine = opt.open_engine(pair, choice, "chat")
    try:
        d = engine.draft
        draft_desc = d.source if d.source == "none" else f"{d.source} (up to {d.tokens} tokens)"
        banner = (
            f"gemma chat · {pair.name} · context {engine.n_ctx} · draft {draft_desc} · "
            f"loaded in {engine.load_seconds:.2f}s\n/help for commands, Ctrl-C stops a reply, Ctrl-D or /bye exits"
        )
        if engine.is_base_model:
            banner += "\n" + base_model_note(pair.name)
        if terminal and not dumb_terminal():
            sys.stderr.write("\x1b[2K")
        sys.stderr.write(banner + "\n")
        sys.stderr.flush()
        settings = ChatSettings(sampling=sampling, max_tokens=max_tokens, draft=draft, draft_tokens=draft_tokens)
        repl = repl_class(
            engine,
            pair,
            settings,
            Conversation(system=system or None),
            reader=make_reader(config.history_file(), lambda msg: sys.stderr.write(msg + "\n")),
            out=sys.stdout,
            err=sys.stderr,
            color=color,
            live=terminal and sys.stderr.isatty() and not dumb_terminal(),  # the live line moves the cursor
        )
        repl.run()
    finally:
        engine.close()
