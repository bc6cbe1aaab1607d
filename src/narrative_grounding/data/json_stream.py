"""Reading the large annotation files one record at a time.

``png_coco_train2017.json`` and ``panoptic_train2017.json`` hold one record per image (133k narratives,
118k panoptic annotations); ``json.load`` would hold all of them as Python objects at once, hundreds of MB
more for every extra hundred thousand images. These readers parse the top-level list (or the lists inside
the top-level object) element by element with the standard library's C decoder, keeping only the current
chunk of text in memory. Syntax errors name the file, line, column and character.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from .layout import PngDataError

_CHUNK_CHARS = 1 << 20
# A single record (one narrative, one image's segments) is a few kB; a value still unparsed after this
# many characters is malformed, not cut by a chunk boundary.
_MAX_VALUE_CHARS = 1 << 24
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class _Stream:
    def __init__(self, path: Path, handle: Any):
        self.path = path
        self.handle = handle
        self.buffer = ""
        self.pos = 0  # in buffer
        self.eof = False
        self.dropped = 0  # characters dropped from the front of the buffer so far
        self.dropped_lines = 0
        self.dropped_column = 0  # characters after the last newline of the dropped text
        self.decoder = json.JSONDecoder()

    def fill(self) -> None:
        if self.pos > _CHUNK_CHARS:
            # Forget what has been parsed; keep the line count for error messages.
            consumed = self.buffer[: self.pos]
            newlines = consumed.count("\n")
            self.dropped_lines += newlines
            self.dropped_column = (
                len(consumed) - consumed.rfind("\n") - 1 if newlines else self.dropped_column + len(consumed)
            )
            self.dropped += self.pos
            self.buffer = self.buffer[self.pos :]
            self.pos = 0
        try:
            chunk = self.handle.read(_CHUNK_CHARS)
        except UnicodeDecodeError as error:
            raise PngDataError(
                f"{self.path}: not UTF-8 text after character {self.dropped + len(self.buffer)}: {error.reason}",
                file=self.path,
            ) from error
        if chunk:
            self.buffer += chunk
        else:
            self.eof = True

    def error(self, message: str, pos: int) -> PngDataError:
        line = self.dropped_lines + self.buffer.count("\n", 0, pos) + 1
        last_newline = self.buffer.rfind("\n", 0, pos)
        column = pos - last_newline if last_newline >= 0 else self.dropped_column + pos + 1
        size = os.path.getsize(self.path)
        truncated = self.eof and (pos >= len(self.buffer) - 1 or message.startswith("Unterminated"))
        return PngDataError(
            f"{self.path}: invalid JSON at line {line}, column {column} (character {self.dropped + pos} of "
            f"{size} bytes): {message}" + (" (the file ends there: it looks truncated)" if truncated else ""),
            file=self.path,
        )

    def peek(self) -> str:
        """The next non-whitespace character ("" at the end of the file)."""
        while True:
            self.pos = _WHITESPACE.match(self.buffer, self.pos).end()
            if self.pos < len(self.buffer) or self.eof:
                return self.buffer[self.pos : self.pos + 1]
            self.fill()

    def expect(self, char: str, what: str) -> None:
        if self.peek() != char:
            raise self.error(f"Expecting {what}", self.pos)
        self.pos += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as error:
                if self.eof or len(self.buffer) - self.pos > _MAX_VALUE_CHARS:
                    raise self.error(error.msg, error.pos) from None
                self.fill()  # the value may go on in the next chunk
                continue
            if end == len(self.buffer) and not self.eof:
                self.fill()  # a number or literal may go on in the next chunk
                continue
            self.pos = end
            return value

    def items(self) -> Iterator[Any]:
        """The elements of the list that starts here."""
        self.expect("[", "'[' (a JSON list)")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            char = self.peek()
            self.pos += 1
            if char == "]":
                return
            if char != ",":
                self.pos -= 1
                raise self.error("Expecting ',' delimiter or ']'", self.pos)

    def members(self, streamed: Collection[str]) -> Iterator[tuple[str, int | None, Any]]:
        """``(key, None, value)`` for the members of the object that starts here, except that the elements of
        a list under a key in ``streamed`` come one by one as ``(key, index, element)``."""
        self.expect("{", "'{' (a JSON object)")
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            if self.peek() != '"':
                raise self.error("Expecting property name enclosed in double quotes", self.pos)
            key = self.value()
            self.expect(":", "':' delimiter")
            if key in streamed and self.peek() == "[":
                for index, element in enumerate(self.items()):
                    yield key, index, element
            else:
                yield key, None, self.value()
            char = self.peek()
            self.pos += 1
            if char == "}":
                return
            if char != ",":
                self.pos -= 1
                raise self.error("Expecting ',' delimiter or '}'", self.pos)

    def finish(self) -> None:
        if self.peek():
            raise self.error("Extra data", self.pos)


def _kind_of(first: str) -> str:
    # What a JSON document is, told from its first character (the document itself is not parsed).
    if not first:
        return "an empty file"
    kinds = {"{": "dict", '"': "str", "t": "bool", "f": "bool", "n": "null"}
    kind = kinds.get(first, "number" if first in "-0123456789" else None)
    return f"a {kind} (the file starts with {first!r})" if kind else f"a file that starts with {first!r}"


def _open(path: str | os.PathLike) -> tuple[Path, Any]:
    path = Path(path)
    if not path.is_file():
        raise PngDataError(f"Annotation file not found: {path}", file=path)
    return path, path.open(encoding="utf-8")


def iter_json_list(path: str | os.PathLike) -> Iterator[Any]:
    """The elements of the JSON list in ``path``, one at a time.

    Raises:
        PngDataError: the file is missing, is not UTF-8, is not a list, or is not valid JSON (file, line,
            column, character; "looks truncated" when it ends inside a value).
    """
    path, handle = _open(path)
    with handle:
        stream = _Stream(path, handle)
        if stream.peek() != "[":
            raise PngDataError(
                f"{path}: expected a JSON list of narratives, got {_kind_of(stream.peek())}", file=path
            )
        yield from stream.items()
        stream.finish()


def iter_json_members(
    path: str | os.PathLike, streamed: Collection[str]
) -> Iterator[tuple[str, int | None, Any]]:
    """The members of the JSON object in ``path``; the lists under the keys ``streamed`` element by element.

    Yields:
        ``(key, None, value)`` for a whole member, ``(key, index, element)`` for an element of a streamed list.
    Raises:
        PngDataError: as :func:`iter_json_list`, or when the file is not a JSON object.
    """
    path, handle = _open(path)
    with handle:
        stream = _Stream(path, handle)
        if stream.peek() != "{":
            found = stream.peek() or "an empty file"
            raise PngDataError(
                f"{path}: expected a JSON object, but the file starts with {found!r}", file=path
            )
        yield from stream.members(streamed)
        stream.finish()
