"""The event-loop side of a generation: submit, wait for READY, stream pieces, end cleanly.

Both API families use this: it turns the job's events into an async iterator
of pieces, cancels the job when the client goes away (a disconnect seen on
the ASGI receive channel, or the response stream being torn down), and
records the finished generation in the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

from starlette.requests import Request

from gemma_cli.server.jobs import DONE, ERROR, PIECE, READY, CutShort, Job, Outcome
from gemma_cli.server.validate import GenOptions

STOP_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length", "cancelled": "stop"}


def prompt_work(options: GenOptions, *, text: str | None = None, messages: Sequence[Mapping[str, str]] = (),
                system: str | None = None, raw: bool = False) -> Callable[[Any], Any]:
    """What a job runs on the model's thread: render and tokenize the prompt, start a Generation."""

    def work(engine: Any) -> Any:
        stop = tuple(options.stop)
        if messages:
            tokens = engine.chat_tokens(list(messages))
            stop += tuple(s for s in engine.chat_stops if s not in stop)  # a base model's transcript frame, as in `gemma chat`
        else:
            tokens = engine.prompt_tokens(text or "", system=system, raw=raw)
        max_tokens = options.max_tokens or engine.n_ctx
        return engine.generate(tokens, max_tokens=max_tokens, sampling=options.sampling(), stop=stop)

    return work


class Running:
    """A submitted job as its route sees it. Use `await Running.start(...)`, then `pieces()`."""

    def __init__(self, app_state: Any, model: str, job: Job, request: Request) -> None:
        self.state = app_state
        self.model = model
        self.job = job
        self.request = request
        self.outcome: Outcome | None = None
        self.load_s = 0.0
        self._watch: asyncio.Task | None = None
        self._drafted: list[Any] = []

    @classmethod
    async def start(cls, app_state: Any, model: str, job: Job, request: Request) -> "Running":
        """Queue the job and wait until the model is loaded and the prompt accepted (errors raise here)."""
        run = cls(app_state, model, job, request)
        run._watch = asyncio.create_task(run._watch_disconnect())
        try:
            await app_state.manager.submit(model, job)
            event = await job.next_event()
            if event.kind == ERROR:
                raise event.value
            if event.kind == DONE:  # a load-only job can finish at once
                run.outcome = event.value
            else:
                assert event.kind == READY
                run.load_s = float(event.value or 0.0)
                if job.work is None:
                    run.outcome = await run._final()
        except BaseException:
            run.close()
            raise
        return run

    async def _watch_disconnect(self) -> None:
        """Cancel the job when the client disconnects (the body was already read)."""
        with contextlib.suppress(Exception):
            while True:
                message = await self.request.receive()
                if message.get("type") == "http.disconnect":
                    self.job.cancel()
                    return

    async def _final(self) -> Outcome:
        event = await self.job.next_event()
        if event.kind == ERROR:
            raise event.value
        return event.value

    async def pieces(self) -> AsyncIterator[Any]:
        """Each streamed Piece; afterwards `self.outcome` is set. Cancels the job if abandoned."""
        try:
            while self.outcome is None:
                event = await self.job.next_event()
                if event.kind == PIECE:
                    if event.value.n_drafted:
                        self._drafted.append(event.value)
                    yield event.value
                elif event.kind == DONE:
                    self.outcome = event.value
                    result = self.outcome.result
                    if result is not None and self.job.server_stopping and result.stop_reason.value == "cancelled":
                        raise CutShort(f"the server is stopping: this reply was cut short after {len(result.tokens)} tokens")
                    if self.outcome.result is not None:
                        self.state.metrics.observe_generation(self.model, self.outcome, self._drafted)
                        if self.state.settings.verbose:
                            sys.stderr.write(summary_line(self.model, self.outcome) + "\n")
                elif event.kind == ERROR:
                    raise event.value
        finally:
            self.close()

    async def text(self) -> str:
        return "".join([p.text async for p in self.pieces()])

    def close(self) -> None:
        """Stop watching; cancel the job unless it already finished (the client went away)."""
        if self.outcome is None:
            self.job.cancel()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None


def draft_stats(stats: Any) -> dict[str, Any]:
    """The speculative-decoding numbers every response carries (see README: draft statistics)."""
    return {
        "draft_source": stats.draft_source,
        "draft_max": stats.draft_max,
        "draft_proposed": stats.draft_proposed,
        "draft_accepted": stats.draft_accepted,
        "acceptance_rate": round(stats.acceptance_rate, 4),
        "tokens_per_pass": round(stats.tokens_per_pass, 4),
    }


def summary_line(model: str, outcome: Outcome) -> str:
    """One stderr line per generation for `gemma serve --verbose`."""
    s = outcome.result.stats
    draft = (f"{s.draft_source} k<={s.draft_max}: {s.draft_accepted}/{s.draft_proposed} accepted ({s.acceptance_rate:.0%}), "
             f"{s.tokens_per_pass:.2f} tokens/pass" if s.draft_source != "none" else "no drafting")
    return (f"{model}: {s.prompt_tokens} prompt tokens ({s.prompt_tokens - s.prompt_evaluated} cached), "
            f"{s.generated_tokens} generated at {s.tokens_per_s:.1f} tok/s, first token {outcome.ttft_s * 1000:.0f} ms; {draft}; "
            f"{outcome.result.stop_reason.value}")
