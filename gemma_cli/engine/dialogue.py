"""Chat with a base model: a transcript frame it continues, and where its reply ends.

A base (pre-trained, not instruction-tuned) GGUF has no chat template, and
wrapping it in Gemma's `<start_of_turn>` format makes it repeat the question or
ramble: it never learnt that format. What a base model has seen is text, and
plain transcripts ("User: ... / Assistant: ...") after a few example exchanges
are continued as dialogue. The reply ends where the model starts the next
user line, so `STOPS` are the chat's stop strings.

The frame is a prefix that does not change between turns, so the engine's KV
cache keeps everything but the newest exchange.
"""

from __future__ import annotations

from typing import Mapping, Sequence

USER, ASSISTANT = "User", "Assistant"

INTRO = (
    "A conversation between a curious user and a helpful, knowledgeable assistant. "
    "The assistant answers in a few clear sentences, stays on topic and says so when it does not know."
)

EXAMPLES = (
    ("Hello! Who are you?", "Hello! I am an assistant. Ask me anything and I will answer briefly."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Give me three colors of the rainbow.", "Red, green and blue."),
)

#: The reply ends where the model begins the next turn (either speaker) or a blank line (the examples' replies are one paragraph).
STOPS = (f"\n{USER}:", f"\n{ASSISTANT}:", "\n\n")


def _line(text: str) -> str:
    """A message as one transcript entry: trimmed, blank lines closed up (they would end the reply early)."""
    return "\n".join(line for line in text.strip().splitlines() if line.strip())


def render_dialogue(messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
    """The transcript for `messages`, ending with `Assistant:` to continue.

    The system messages, all of them in order (an API client may add one mid-conversation), replace the intro;
    empty ones count for nothing.
    """
    system = [_line(m.get("content", "")) for m in messages if m.get("role") == "system"]
    system = [text for text in system if text]
    parts = ["\n".join(system) if system else INTRO, ""]
    for question, answer in EXAMPLES:
        parts += [f"{USER}: {question}", f"{ASSISTANT}: {answer}", ""]
    for m in messages:
        if m.get("role") == "user":
            parts.append(f"{USER}: {_line(m.get('content', ''))}")
        elif m.get("role") == "assistant":
            parts += [f"{ASSISTANT}: {_line(m.get('content', ''))}", ""]
    text = "\n".join(parts)
    return text + f"\n{ASSISTANT}:" if add_generation_prompt else text
