"""Token bytes -> safe text pieces: UTF-8 across token boundaries, stop strings.

A multi-byte character split over two tokens is held until complete; text that
could be the start of a stop string is held until it is known not to be one,
so a stop string is never half-printed.
"""

from __future__ import annotations

import codecs
from typing import Sequence


class TextStream:
    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stops if s]
        self._held = ""  # decoded text not yet released (possible stop prefix)
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(data)
        if not self._stops:
            out, self._held = self._held, ""
            return out
        cut = -1
        for s in self._stops:
            i = self._held.find(s)
            if i != -1 and (cut == -1 or i < cut):
                cut = i
        if cut != -1:
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return out
        keep = self._longest_stop_prefix_suffix()
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        held = self._held
        best = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(held)), best, -1):
                if held.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """End of generation: release what was held (an incomplete character becomes U+FFFD)."""
        if self.stopped:
            return ""
        out = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return out
