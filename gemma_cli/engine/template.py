"""Render a GGUF's chat template, only ever inside jinja2's immutable sandbox.

Templates ship inside model files, which are untrusted: the sandbox blocks
attribute access to Python internals, and rendering errors become one-line
`ModelFileError`s instead of tracebacks.
"""

from __future__ import annotations

import datetime
from typing import Mapping, Sequence

from gemma_cli.errors import GemmaError, ModelFileError

Message = Mapping[str, str]

# Used when a GGUF carries no template: Gemma's own turn format.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}<start_of_turn>user\n{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}{% if loop.index0 == 0 or messages[loop.index0 - 1]['role'] != 'system' %}<start_of_turn>user\n{% endif %}{{ m['content'] }}<end_of_turn>\n"
    "{% else %}<start_of_turn>model\n{{ m['content'] }}<end_of_turn>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


class TemplateError(ModelFileError):
    """The model's chat template failed to render."""


def _raise(message: str) -> None:
    raise TemplateError(f"chat template refused the conversation: {message}")


def render_chat(
    template: str | None,
    messages: Sequence[Message],
    *,
    bos_token: str = "<bos>",
    eos_token: str = "<eos>",
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for `messages` (roles: system, user, assistant)."""
    import jinja2

    from gemma_cli.engine.template_limits import LimitedSandbox

    env = LimitedSandbox(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.ChainableUndefined)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.render_limited(
            template or GEMMA_TEMPLATE,
            messages=[dict(m) for m in messages],
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except GemmaError:
        raise
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"chat template tried an unsafe operation: {exc}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"chat template is invalid: {exc}") from None
    except Exception as exc:  # template bugs surface as arbitrary Python errors
        raise TemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from None
