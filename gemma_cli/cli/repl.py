"""The `gemma chat` read-eval-print loop: input, slash commands, one turn at a time.

No engine logic lives here: a turn is "add the user message, fit the
conversation into the context, stream a generation, keep the reply".

Input comes from `chat_input` (prompt_toolkit on a terminal, plain lines from
a pipe); slash commands live in `slash`.

Ctrl-C while a reply streams stops it after the current decode step. The
partial reply is KEPT as the assistant's message: the conversation then holds
exactly what the user saw, the user/assistant alternation the chat templates
require stays intact, and the KV cache already holds those tokens. `/clear`
starts over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from gemma_cli.chat import Conversation
from gemma_cli.cli.chat_input import BLOCK, Reader, unwrap_block
from gemma_cli.cli.interrupt import CancelOnSigint
from gemma_cli.cli.output import verbose_summary_lines
from gemma_cli.cli.render import ReplyRenderer
from gemma_cli.cli.slash import run_command
from gemma_cli.engine import GenerationResult, SamplingParams
from gemma_cli.errors import GemmaError
from gemma_cli.pair import ModelPair

if TYPE_CHECKING:
    from gemma_cli.engine import Engine


@dataclass(frozen=True)
class ChatSettings:
    """Everything `/set` can change besides the draft source."""

    sampling: SamplingParams
    max_tokens: int = 1024
    draft: str = "auto"
    draft_tokens: int | None = None
    verbose: bool = False
    highlight: bool = False


class ChatRepl:
    """One chat session: reads messages, runs turns and slash commands until /bye or end of input."""

    def __init__(
        self,
        engine: Engine,
        pair: ModelPair,
        settings: ChatSettings,
        conversation: Conversation,
        *,
        reader: Reader,
        out: TextIO,
        err: TextIO,
        color: bool,
        live: bool,
    ) -> None:
        self.engine = engine
        self.pair = pair
        self.settings = settings
        self.conv = conversation
        self.reader = reader
        self.out = out
        self.err = err
        self.color = color
        self.live = live
        self.last: GenerationResult | None = None

    # output helpers
    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def hint(self, text: str) -> None:
        line = text.replace("\n", " ")
        self.err.write((f"\x1b[33m{line}\x1b[0m" if self.color else line) + "\n")
        self.err.flush()

    def run(self) -> None:
        while True:
            line = self.reader.read()
            if line is None:
                break
            if not line.strip():
                continue
            try:
                if line.lstrip().startswith("/") and not line.lstrip().startswith(BLOCK):
                    if not run_command(self, line.strip()):
                        break
                else:
                    self.turn(unwrap_block(line))
            except GemmaError as exc:
                self.hint(exc.line())
            except KeyboardInterrupt:  # Ctrl-C just before or after a reply's own handler
                self.conv.pop_user()
                self.hint("(interrupted)")
            except BrokenPipeError:  # the reader of our output is gone: nothing left to talk to
                raise
            except Exception as exc:  # nothing typed in chat may end the session
                self.conv.pop_user()
                self._unexpected(exc)

    def _unexpected(self, exc: Exception) -> None:
        """A failure we did not foresee: one line, the conversation kept, the session alive."""
        import os
        import traceback

        if os.environ.get("GEMMA_DEBUG"):
            traceback.print_exc(file=self.err)
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        self.hint(
            f"that message failed ({type(exc).__name__}{': ' + detail if detail else ''}); "
            "the conversation is kept, try again or change settings (GEMMA_DEBUG=1 shows a traceback)"
        )

    # one turn
    def turn(self, text: str) -> None:
        if not text.strip():
            return
        conv, engine, s = self.conv, self.engine, self.settings
        conv.add_user(text)
        try:
            fitted = conv.fit(engine, s.max_tokens)
            generation = engine.generate(fitted.tokens, max_tokens=s.max_tokens, sampling=s.sampling, stop=engine.chat_stops)
        except GemmaError:
            conv.pop_user()
            raise
        if fitted.dropped_turns:
            self.hint(
                f"(the conversation outgrew the {engine.n_ctx}-token context: dropped the oldest "
                f"{fitted.dropped_turns} exchange(s), kept the system prompt)"
            )
        renderer = ReplyRenderer(self.out, self.err, live=self.live, color=self.color, highlight=s.highlight)
        try:
            with CancelOnSigint(engine, second_interrupts=False) as sig:
                shown = renderer.stream(generation, generation.stats, prompt_tokens=len(fitted.tokens),
                                        stopped=lambda: sig.fired)
        except Exception:
            conv.pop_user()
            raise
        self._finish_turn(generation.result, shown, sig.fired, renderer)

    def _finish_turn(self, result: GenerationResult | None, shown: str, interrupted: bool, renderer) -> None:
        """Record the reply and print its summary (shared by the in-process and the server-backed REPL)."""
        if result is None:  # the stream ended abnormally
            self.conv.pop_user()
            return
        # After Ctrl-C the conversation keeps what the user saw, not the rest of the step being verified.
        self.conv.add_assistant(shown if interrupted else result.text)
        self.last = result
        renderer.summary(result.stats, result.stop_reason)
        if interrupted:
            self.hint("(stopped; the partial reply stays in the conversation, /clear starts over)")
        if self.settings.verbose:
            self._verbose(result)

    def _verbose(self, result: GenerationResult) -> None:
        rows = verbose_summary_lines(result.stats, self.engine.load_seconds)
        width = max(len(k) for k, _ in rows) + 2
        for key, value in rows:
            self.err.write(f"{key + ':':<{width}}{value}\n")
        self.err.flush()
