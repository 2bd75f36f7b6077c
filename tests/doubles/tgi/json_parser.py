"""JSON parsing with positions, so that body errors read like axum's Json rejection over serde_json."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


class JsonSyntaxError(Exception):
    def __init__(self, msg: str, pos: int) -> None:
        super().__init__(msg)
        self.msg, self.pos = msg, pos


@dataclass
class Node:
    kind: str  # obj arr str int float bool null
    value: Any  # python value for scalars
    start: int  # index of the first byte
    end: int  # index after the last byte
    items: list = field(default_factory=list)  # obj: [(key, key_end, Node)]; arr: [Node]

    def py(self) -> Any:
        if self.kind == "obj":
            return {k: n.py() for k, _, n in self.items}
        if self.kind == "arr":
            return [n.py() for n in self.items]
        return self.value


_WS = b" \t\n\r"

_NUM = re.compile(rb"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


class _Parser:
    def __init__(self, data: bytes) -> None:
        self.d, self.i = data, 0

    def ws(self) -> None:
        while self.i < len(self.d) and self.d[self.i] in _WS:
            self.i += 1

    def peek_err(self, msg: str) -> JsonSyntaxError:  # serde_json peek_error: column of the peeked byte
        return JsonSyntaxError(msg, min(len(self.d), self.i + 1))

    def document(self) -> Node:
        self.ws()
        node = self.value()
        self.ws()
        if self.i < len(self.d):
            raise self.peek_err("trailing characters")
        return node

    def value(self) -> Node:
        if self.i >= len(self.d):
            raise self.peek_err("EOF while parsing a value")
        c = self.d[self.i : self.i + 1]
        start = self.i
        if c == b"{":
            return self.obj()
        if c == b"[":
            return self.arr()
        if c == b'"':
            s = self.string()
            return Node("str", s, start, self.i)
        for lit, val in ((b"null", None), (b"true", True), (b"false", False)):
            if c == lit[:1]:
                if self.d[self.i : self.i + len(lit)] != lit:
                    raise self.peek_err("expected ident")
                self.i += len(lit)
                return Node("null" if val is None else "bool", val, start, self.i)
        m = _NUM.match(self.d, self.i)
        if m and (c == b"-" or c.isdigit()):
            self.i = m.end()
            text = m.group().decode()
            if m.group(1) or m.group(2):
                return Node("float", float(text), start, self.i)
            return Node("int", int(text), start, self.i)
        if c == b"-":
            self.i += 1
            raise self.peek_err("invalid number")
        raise self.peek_err("expected value")

    def string(self) -> str:
        j = self.i + 1
        while True:
            k = self.d.find(b'"', j)
            if k < 0:
                self.i = len(self.d)
                raise JsonSyntaxError("EOF while parsing a string", len(self.d))
            n = 0
            while self.d[k - 1 - n : k - n] == b"\\":
                n += 1
            if n % 2 == 0:
                break
            j = k + 1
        raw = self.d[self.i : k + 1]
        self.i = k + 1
        try:
            return json.loads(raw)
        except ValueError as e:
            raise JsonSyntaxError("invalid escape", self.i) from e

    def obj(self) -> Node:
        node = Node("obj", None, self.i, 0)
        self.i += 1
        self.ws()
        if self.d[self.i : self.i + 1] == b"}":
            self.i += 1
            node.end = self.i
            return node
        while True:
            self.ws()
            if self.i >= len(self.d):
                raise self.peek_err("EOF while parsing an object")
            if self.d[self.i : self.i + 1] != b'"':
                raise self.peek_err(
                    "trailing comma" if self.d[self.i : self.i + 1] == b"}" else "key must be a string"
                )
            key = self.string()
            key_end = self.i
            self.ws()
            if self.i >= len(self.d):
                raise self.peek_err("EOF while parsing an object")
            if self.d[self.i : self.i + 1] != b":":
                raise self.peek_err("expected `:`")
            self.i += 1
            self.ws()
            node.items.append((key, key_end, self.value()))
            self.ws()
            c = self.d[self.i : self.i + 1]
            if c == b",":
                self.i += 1
            elif c == b"}":
                self.i += 1
                node.end = self.i
                return node
            elif not c:
                raise self.peek_err("EOF while parsing an object")
            else:
                raise self.peek_err("expected `,` or `}`")

    def arr(self) -> Node:
        node = Node("arr", None, self.i, 0)
        self.i += 1
        self.ws()
        if self.d[self.i : self.i + 1] == b"]":
            self.i += 1
            node.end = self.i
            return node
        while True:
            self.ws()
            if self.d[self.i : self.i + 1] == b"]":
                raise self.peek_err("trailing comma")
            node.items.append(self.value())
            self.ws()
            c = self.d[self.i : self.i + 1]
            if c == b",":
                self.i += 1
            elif c == b"]":
                self.i += 1
                node.end = self.i
                return node
            elif not c:
                raise self.peek_err("EOF while parsing a list")
            else:
                raise self.peek_err("expected `,` or `]`")


def line_col(data: bytes, pos: int) -> tuple[int, int]:
    """serde_json position_of_index: 1-based line, column = bytes since the line start."""
    start = data.rfind(b"\n", 0, pos) + 1
    return data.count(b"\n", 0, start) + 1, pos - start
