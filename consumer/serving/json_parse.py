"""A REST body as TF Serving's parser reads it (rapidjson, in ``util/json_tensor.cc``): the
document, its errors in rapidjson's words, and values quoted in an error as TF Serving quotes
them. Four things differ from Python's ``json`` and are made to match: bytes after the first
value are ignored, a value nested deeper than Python's parser goes is skipped if nobody reads it,
text that is not UTF-8 is kept as the bytes it was, and half a surrogate pair (``"\\ud800"``)
is refused, as rapidjson refuses it (Python would make a string no codec can write).

No numpy and no TensorFlow: it runs in the server and in its parse process alike.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import orjson

from consumer.serving.errors import invalid

MAX_ELEMENTS = 1 << 20  # values and lists in one body, counted before it is parsed
DEBUG_BYTES = 256  # TF Serving cuts a value quoted in an error after this many bytes


@dataclass(frozen=True)
class Body:
    """A parsed request body, and what its raw text says about it."""

    doc: dict
    has_bools: bool  # a ``true``/``false`` token may hide in a numeric list: check each value
    has_infinity: bool  # ``Infinity`` written out; else an infinite value was a number too big


# -- parsing -----------------------------------------------------------------------------------

_DECODER = json.JSONDecoder()
_RAPIDJSON_TEXT = {  # Python's parse errors in rapidjson's words, as TF Serving reports them
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid escape character in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
}


def parse(body: bytes, max_elements: int = MAX_ELEMENTS) -> Body:
    """The body's top-level object. Its size is bounded before anything is built: the count of
    commas and brackets is at least the count of values and lists it would allocate."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    bound = body.count(b",") + body.count(b"[")
    if bound > max_elements:
        raise invalid(f"JSON Parse error: the request holds up to {bound} values and lists, over "
                      f"the limit of {max_elements} (--max_request_elements): split it")
    try:  # the common case, in orjson's C: several times Python's speed on a big body
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:  # or anything it will not take (NaN, bytes after the value,
        doc = _parse_like_rapidjson(body)  # deep nesting, text that is not UTF-8): TF's way
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {debug(doc)} Is not object")
    return Body(doc, b"true" in body or b"false" in body, b"Infinity" in body)


def _parse_like_rapidjson(body: bytes):
    # surrogateescape keeps bytes that are not UTF-8 as they are, as TF Serving's parser does;
    # they come back out unchanged for a string tensor.
    text = body.decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise invalid(f"JSON Parse error: The document is empty. at offset: {start}")
    try:
        doc, end = _DECODER.raw_decode(text, start)  # what follows the value is ignored, as TF's
    except json.JSONDecodeError as err:
        offset = _byte_offset(text, err.pos)
        _refuse_half_surrogates(body, offset)  # rapidjson stops at whichever error comes first
        raise invalid(f"JSON Parse error: {_rapidjson_text(err)} at offset: {offset}") from None
    except RecursionError:  # Python's parser recurses; TF Serving's does not
        doc, end = _parse_shallow(text, start), len(text)
    except ValueError:  # an integer of thousands of digits
        raise invalid("JSON Parse error: Number too big to be stored in double.") from None
    _refuse_half_surrogates(body, _byte_offset(text, end))
    return doc


def _byte_offset(text: str, pos: int) -> int:
    """rapidjson counts offsets in bytes; Python in characters."""
    return pos if text.isascii() else len(text[:pos].encode("utf-8", "surrogateescape"))


_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.S)  # one escape, left to right


def _refuse_half_surrogates(body: bytes, end: int) -> None:
    """rapidjson's error for a ``\\u`` escape before ``end`` that is half a surrogate pair: a
    high half not followed at once by a low one, or a low half alone (its ``reader.h``,
    ``kParseErrorStringUnicodeSurrogateInvalid``, at the offset of the first backslash).
    orjson refuses these too, so only a body it did not parse is searched."""
    if b"\\u" not in body:
        return
    pending = None  # (start, end) of a high half, awaiting its low half right after it
    for match in _ESCAPE.finditer(body, 0, end):
        point = int(match.group(1), 16) if match.group(1) else -1
        if pending is not None:
            if match.start() != pending[1] or not 0xDC00 <= point <= 0xDFFF:
                raise _half_surrogate(pending[0])
            pending = None
        elif 0xD800 <= point <= 0xDBFF:
            pending = (match.start(), match.end())
        elif 0xDC00 <= point <= 0xDFFF:
            raise _half_surrogate(match.start())
    if pending is not None:
        raise _half_surrogate(pending[0])


def _half_surrogate(offset: int) -> Exception:
    return invalid(f"JSON Parse error: The surrogate pair in string is invalid. at offset: "
                   f"{offset}")


class Deep:
    """A value nested deeper than Python's parser goes, kept as its raw text: the request may
    still be answered if nothing reads it (TF Serving ignores keys it does not know)."""

    def __init__(self, raw: str) -> None:
        self.raw = raw


_WHITESPACE = " \t\n\r"


def _parse_shallow(text: str, pos: int) -> dict:
    """The top-level object of a document too deep for ``json``, member by member: each value
    is parsed if it can be, else skipped by a bracket count and kept as ``Deep``."""
    if text[pos] != "{":
        raise invalid("JSON Parse error: the document nests too deep")
    doc, pos = {}, pos + 1
    while True:
        pos = _skip_space(text, pos)
        if text.startswith("}", pos):
            return doc
        if not text.startswith('"', pos):
            raise invalid(f"JSON Parse error: Missing a name for object member. at offset: {pos}")
        key, pos = json.decoder.scanstring(text, pos + 1)
        pos = _skip_space(text, pos)
        if not text.startswith(":", pos):
            raise invalid("JSON Parse error: Missing a colon after a name of object member. "
                          f"at offset: {pos}")
        pos = _skip_space(text, pos + 1)
        try:
            doc[key], pos = _DECODER.raw_decode(text, pos)
        except RecursionError:
            end = _skip_value(text, pos)
            doc[key], pos = Deep(text[pos:end]), end
        except json.JSONDecodeError as err:
            raise invalid(f"JSON Parse error: {_rapidjson_text(err)} at offset: {err.pos}") from None
        pos = _skip_space(text, pos)
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("}", pos):
            raise invalid("JSON Parse error: Missing a comma or '}' after an object member. "
                          f"at offset: {pos}")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _skip_value(text: str, pos: int) -> int:
    """The end of the nested list or object at ``pos``, found by counting brackets."""
    depth, in_string, escaped = 0, False, False
    for index in range(pos, len(text)):
        char = text[index]
        if in_string:
            escaped, in_string = (not escaped and char == "\\"), escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return index + 1
    raise invalid(f"JSON Parse error: Missing a comma or ']' after an array element. at offset: "
                  f"{len(text)}")


def _rapidjson_text(err: json.JSONDecodeError) -> str:
    for python, rapidjson in _RAPIDJSON_TEXT.items():
        if err.msg.startswith(python):
            return rapidjson
    if err.msg.startswith("Expecting ',' delimiter"):
        inside = _enclosing(err.doc, err.pos)
        return ("Missing a comma or '}' after an object member." if inside == "{"
                else "Missing a comma or ']' after an array element.")
    return err.msg + "."


def _enclosing(text: str, pos: int) -> str:
    """The bracket that encloses ``pos``, by a scan that skips strings (for one message)."""
    stack, in_string, escaped = [], False, False
    for char in text[:pos]:
        if in_string:
            escaped, in_string = (not escaped and char == "\\"), escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def signature_name(body: Body) -> str:
    """The requested signature; "" (absent or empty) means ``serving_default``."""
    name = body.doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(f"JSON Value: {debug(body.doc)} not formatted correctly. 'signature_name' "
                      "key must be a string value.")
    return name



# -- messages ------------------------------------------------------------------------------------


def json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def debug(value) -> str:
    """A value quoted in an error, as TF Serving quotes it: objects indented by 4, lists on one
    line, cut once 256 bytes are written."""
    out: list[str] = []
    _debug(value, 0, out)
    return "".join(out)[:DEBUG_BYTES]


def _debug(value, indent: int, out: list[str]) -> None:
    if sum(map(len, out)) >= DEBUG_BYTES:
        return
    if isinstance(value, Deep):
        out.append(value.raw[:DEBUG_BYTES])
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        out.append("{\n")
        for i, (key, item) in enumerate(value.items()):
            out.append(" " * (indent + 4) + json.dumps(key) + ": ")
            _debug(item, indent + 4, out)
            out.append(",\n" if i < len(value) - 1 else "\n")
            if sum(map(len, out)) >= DEBUG_BYTES:
                return
        out.append(" " * indent + "}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            _debug(item, indent, out)
            if i < len(value) - 1:
                out.append(", ")
            if sum(map(len, out)) >= DEBUG_BYTES:
                return
        out.append("]")
    elif isinstance(value, bool) or value is None:
        out.append(json.dumps(value))
    elif isinstance(value, float):
        out.append(repr(value).replace("e+", "e") if value == value and abs(value) != float("inf")
                   else "")
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    else:
        out.append(str(value))


def shape_text(shape: list[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"
