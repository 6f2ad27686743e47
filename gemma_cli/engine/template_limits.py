"""Bounded rendering of untrusted chat templates: time, loop iterations, sizes.

jinja2's sandbox stops templates from reaching Python internals, but not from
burning CPU or memory: nested `range(100000)` loops, `lipsum(n=10**7)`,
`'x' * 10**10`, a string doubled with `~` sixty times, or a loop printing
gigabytes. A model file carries its own template, so each of these would hang
`gemma run` or exhaust memory. `LimitedSandbox` closes them:

* every `{% for %}` iterates through `guard_iter`, which counts iterations
  against a budget and checks the deadline;
* a trace function checks the deadline on every Python call and generator
  step during the render, and on every line of filters and the stdlib code
  they use, so no pure-Python path can spin past it;
* `*`, `**`, `+`, `%` and `~` check the size of their result *before* making it;
* calls and filters refuse huge integer arguments (`center(10**9)`), and
  `replace` is checked for amplification;
* `lipsum` is gone; output is streamed through `generate()` and capped.

A tripped limit raises `TemplateLimitError` (a `TemplateError`): one line.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gemma_cli.engine.template import TemplateError

MAX_SOURCE = 1 << 20  # characters of template source (real templates: 1-50 KB)
MAX_OUTPUT = 8 << 20  # characters rendered (a full 128k-token context is ~0.5 MB)
MAX_ITERATIONS = 200_000  # loop iterations over the whole render (real templates: thousands)
MAX_INT_ARG = 1_000_000  # largest integer passed to a call or filter
MAX_POW_BITS = 4096  # largest integer `**` may produce
TIME_BUDGET = 1.5  # seconds for compile + render


_JINJA_DIR = os.path.dirname(os.path.abspath(jinja2.__file__))
_NOT_LINE_TRACED = frozenset(
    ["<template>", __file__]
    + [os.path.join(_JINJA_DIR, f"{m}.py") for m in ("compiler", "lexer", "parser", "nodes", "runtime", "environment",
                                                      "sandbox", "visitor", "idtracking", "optimizer", "utils", "_identifier")]
)


class TemplateLimitError(TemplateError):
    """A chat template exceeded a rendering limit (time, iterations or size)."""


class _Deadline(BaseException):
    """Raised from the trace function; BaseException so no `except Exception` swallows it."""


def _sized(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


class _Budget:
    """The limits of one render: deadline, iterations, output characters."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.iterations = 0
        self.output = 0

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"chat template took longer than {self.seconds:g} s to render; refusing it")

    def tracer(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        """Checks the clock on every Python call and generator step during the render,
        and on every line of the code that can loop by itself without calling Python:
        filters and the stdlib helpers they use (textwrap). The compiled template
        (its loops go through `guard_iter`) and jinja's compiler are not line-traced:
        that would cost ten times the render."""
        if time.monotonic() > self.deadline:
            raise _Deadline
        if event == "call" and frame.f_code.co_filename in _NOT_LINE_TRACED:
            return None
        return self.tracer


def _too_big(what: str, size: int) -> TemplateLimitError:
    return TemplateLimitError(f"chat template tried to build {what} of {size:,} items (limit {MAX_OUTPUT:,}); refusing it")


class _GuardedCodeGenerator(CodeGenerator):
    """Compiles `{% for %}` iterables through `environment.guard_iter` and `~` through `guard_concat`."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        guarded = nodes.Call(nodes.EnvironmentAttribute("guard_iter"), [node.iter], [], None, None)
        node = nodes.For(node.target, guarded, node.body, node.else_, node.test, node.recursive, lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.guard_concat(context.eval_ctx, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_FORMAT_WIDTH = re.compile(r"%[-+ #0]*(?:\*|\d{7,})|\{[^{}]*:[^{}]*\d{7,}")


def _check_int_args(args: Iterable[Any]) -> None:
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_INT_ARG:
            raise TemplateLimitError(f"chat template passed {a} to a function (limit {MAX_INT_ARG:,}); refusing it")
        if isinstance(a, str) and len(a) <= 4096 and _FORMAT_WIDTH.search(a):
            raise TemplateLimitError("chat template used a format width over a million; refusing it")


def _check_replace(s: Any, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        n = len(s) + 1 if old == "" else s.count(old)
        if isinstance(count, int) and count >= 0:
            n = min(n, count)
        size = len(s) + n * (len(new) - len(old))
        if size > MAX_OUTPUT:
            raise _too_big("a string", size)


def _check_size(what: str, size: int) -> None:
    if size > MAX_OUTPUT:
        raise _too_big(what, size)


def _check_format(fmt: str, values: Iterable[Any], marker: str) -> None:
    """Each `{...}` / `%` field may repeat a value: bound fields x the longest value."""
    longest = max((_sized(v) or 32 for v in values), default=0)
    _check_size("a string", len(fmt) + fmt.count(marker) * longest)


def _check_amplifier(name: str, s: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Filters and str methods whose result can be far longer than their inputs."""
    if not isinstance(s, str):
        return
    if name in ("do_indent", "indent"):
        width = kwargs.get("width", args[0] if args else 4)
        _check_size("a string", len(s) + (s.count("\n") + 1) * (_sized(width) or 16))
    elif name in ("do_wordwrap", "wordwrap"):
        width = kwargs.get("width", args[0] if args else 79)
        wrap = kwargs.get("wrapstring", args[2] if len(args) > 2 else "\n")
        if isinstance(width, int) and width > 0:
            _check_size("a string", len(s) + len(s) // width * (_sized(wrap) or 1))
    elif name == "expandtabs":
        size = kwargs.get("tabsize", args[0] if args else 8)
        if isinstance(size, int):
            _check_size("a string", len(s) + s.count("\t") * size)
    elif name in ("format", "format_map", "do_format"):
        values = list(args) + list(kwargs.values())
        if name == "format_map" and args and isinstance(args[0], dict):
            values = list(args[0].values())
        _check_format(s, values, "%" if name == "do_format" else "{")


def _check_join(items: Any, sep: str) -> None:
    if isinstance(items, (list, tuple)):
        size = len(sep) * len(items) + sum(len(x) if isinstance(x, str) else 16 for x in items)
        if size > MAX_OUTPUT:
            raise _too_big("a string", size)


class LimitedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox plus limits on time, iterations and sizes (see module doc)."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, time_budget: float = TIME_BUDGET, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.globals.pop("lipsum", None)
        self.time_budget = time_budget
        self.budget = _Budget(time_budget)
        self.filters = {name: self._guard_filter(f) for name, f in self.filters.items()}

    # -- hooks the compiled template calls -------------------------------
    def guard_iter(self, iterable: Any) -> Iterator[Any]:
        budget = self.budget
        for item in iterable:
            budget.iterations += 1
            if budget.iterations > MAX_ITERATIONS:
                raise TemplateLimitError(f"chat template ran more than {MAX_ITERATIONS:,} loop iterations; refusing it")
            if budget.iterations & 1023 == 0:
                budget.check_time()
            yield item

    def guard_concat(self, eval_ctx: Any, parts: tuple[Any, ...]) -> str:
        size = sum(_sized(p) if isinstance(p, str) else 0 for p in parts)
        if size > MAX_OUTPUT:
            raise _too_big("a string", size)
        return markup_join(parts) if eval_ctx.autoescape else str_join(parts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_POW_BITS:
                raise TemplateLimitError("chat template computed a number too large; refusing it")
            for seq, n in ((left, right), (right, left)):
                if _sized(seq) and isinstance(n, int) and _sized(seq) * n > MAX_OUTPUT:
                    raise _too_big("a sequence", _sized(seq) * n)
        elif operator == "+" and _sized(left) + _sized(right) > MAX_OUTPUT:
            raise _too_big("a sequence", _sized(left) + _sized(right))
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            if right * abs(left).bit_length() > MAX_POW_BITS:
                raise TemplateLimitError("chat template computed a power too large; refusing it")
        elif operator == "%" and isinstance(left, str):
            _check_int_args([left])
            values = right.values() if isinstance(right, dict) else right if isinstance(right, tuple) else [right]
            _check_format(left, values, "%")
        return super().call_binop(context, operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_int_args(args)
        _check_int_args(kwargs.values())
        name = getattr(obj, "__name__", "")
        owner = getattr(getattr(obj, "__wrapped__", obj), "__self__", None)
        if isinstance(owner, str):
            if name == "replace":
                _check_replace(owner, *args[:3])
            elif name in ("format", "format_map", "join"):
                _check_int_args([owner])
                if name == "join" and args:
                    _check_join(args[0], owner)
            _check_amplifier(name, owner, args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        if _sized(result) > MAX_OUTPUT:
            raise _too_big("a value", _sized(result))
        return result

    def _guard_filter(self, f: Callable[..., Any]) -> Callable[..., Any]:
        name = getattr(f, "__name__", "")

        @functools.wraps(f)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            values = [a for a in args if not _is_context(a)]
            _check_int_args(values[1:])
            _check_int_args(kwargs.values())
            if name == "do_replace" and len(values) >= 3:
                _check_replace(str(values[0]), *(str(v) for v in values[1:3]))
            elif name == "do_join" and values:
                _check_join(values[0], str(values[1]) if len(values) > 1 else str(kwargs.get("d", "")))
            elif values:
                _check_amplifier(name, values[0], tuple(values[1:]), kwargs)
            result = f(*args, **kwargs)
            if _sized(result) > MAX_OUTPUT:
                raise _too_big("a value", _sized(result))
            return result

        return guarded

    # -- rendering -------------------------------------------------------
    def render_limited(self, source: str, **context: Any) -> str:
        """Compile and render `source` within the limits; output capped at MAX_OUTPUT."""
        if len(source) > MAX_SOURCE:
            raise TemplateLimitError(f"chat template is {len(source):,} characters (limit {MAX_SOURCE:,}); refusing it")
        self.budget = budget = _Budget(self.time_budget)
        previous = sys.gettrace()
        sys.settrace(budget.tracer)
        try:
            compiled = self.from_string(source)
            out: list[str] = []
            for chunk in compiled.generate(**context):
                budget.output += len(chunk)
                if budget.output > MAX_OUTPUT:
                    raise TemplateLimitError(f"chat template output exceeds {MAX_OUTPUT:,} characters; refusing it")
                out.append(chunk)
            return "".join(out)
        except _Deadline:
            raise TemplateLimitError(f"chat template took longer than {self.time_budget:g} s to render; refusing it") from None
        except RecursionError:
            raise TemplateLimitError("chat template recursed too deeply; refusing it") from None
        except MemoryError:
            raise TemplateLimitError("chat template ran out of memory; refusing it") from None
        finally:
            sys.settrace(previous)


def _is_context(value: Any) -> bool:
    from jinja2 import Environment
    from jinja2.nodes import EvalContext
    from jinja2.runtime import Context

    return isinstance(value, (Context, EvalContext, Environment))
