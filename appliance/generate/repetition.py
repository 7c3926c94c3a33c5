"""Stop a generation caught in a loop.

Greedy decoding of a small model can fall into repeating itself until ``max_tokens``
(SmolLM2-135M on the demo corpus: the same sentence over and over, or
``**kwargs_dict_list_dict_list...``). llama.cpp's repeat penalty would fight it, but it also
fights what a grounded answer should do, copy the sources' words, so the product keeps it
off and watches the text instead: once the last ``window`` characters already occurred
earlier in the answer, the answer is looping, and the repeated copy is cut off.
"""

from __future__ import annotations

__all__ = ["RepetitionGuard"]


class RepetitionGuard:
    """Feed it the streamed pieces; it says when the text starts repeating itself.

    A ``window`` of 0 never stops. Only exact repeats of ``window`` characters or more count:
    a short phrase said twice is normal text, a 100-character span said twice in one short
    answer is a loop.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._text: list[str] = []
        self._length = 0
        self._checked = 0
        self.cut: int | None = None
        """Where the repeated copy starts, once :meth:`feed` has returned True."""

    def feed(self, piece: str) -> bool:
        """Add ``piece``; True when the text now ends in a repeat of ``window`` characters."""
        self._text.append(piece)
        self._length += len(piece)
        if self.window <= 0 or self._length <= self.window or self.cut is not None:
            return self.cut is not None
        text = "".join(self._text)
        self._text = [text]
        # every window that ends inside the new piece (a piece may hold several characters)
        for end in range(max(self._checked, self.window + 1), len(text) + 1):
            start = end - self.window
            if text.find(text[start:end], 0, end - 1) != -1:
                self.cut = start
                return True
        self._checked = len(text) + 1
        return False

    def text(self) -> str:
        """The text fed so far, without the repeated copy once a loop was found."""
        text = "".join(self._text)
        return text if self.cut is None else text[: self.cut]
