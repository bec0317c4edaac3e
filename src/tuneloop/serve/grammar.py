"""Structured output: a JSON schema becomes the engine's grammar, and every answer is validated after.

llama.cpp: llama-cpp-python's own JSON-schema → GBNF converter (``llama_cpp.llama_grammar``), with
whitespace held strict: at most one space after a structural character and none anywhere else (no
newlines, no indentation), so a model cannot spend its tokens on blanks. One space is allowed because
our training targets are written with ``", "`` and ``": "`` (``Task.answer_json``); forbidding it would
push the model off the format it learned.

transformers: neither xgrammar nor llguidance is a dependency (xgrammar pins its own torch/triton wheels,
which clash with the CPU torch build we pin). The transformers backend therefore decodes without a
grammar, and the server's validation after decoding reports any violation (``schema_valid: false``
and the schema errors in the response, a metric per version). See docs/serving.md.

Validation after decoding is the same for every engine: ``validate_answer``.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from tuneloop.errors import TuneloopError

# What every structural position may hold: nothing or one space (see the module docstring).
STRICT_SPACE_RULE = '" "?'

# Schema keywords the GBNF converter ignores silently; they are still enforced by validation after.
_UNCONSTRAINED_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


def json_schema_gbnf(schema: dict[str, Any]) -> str:
    """GBNF for JSON documents matching ``schema``, with strict whitespace; properties in schema order."""
    from llama_cpp.llama_grammar import SchemaConverter

    if not isinstance(schema, dict):
        raise TuneloopError("a JSON schema must be an object", where="response_format.json_schema.schema")
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    converter = SchemaConverter(
        prop_order={name: index for index, name in enumerate(properties)},
        allow_fetch=False,
        dotall=False,
        raw_pattern=False,
    )
    try:
        resolved = converter.resolve_refs(_split_type_lists(schema), "request")
        converter.visit(resolved, "")
    # The converter signals unsupported input with asserts and assorted errors.
    except (
        AssertionError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        RecursionError,
        NotImplementedError,
    ) as exc:
        raise TuneloopError(
            f"this JSON schema can't be turned into a grammar: {exc}", where="response_format.json_schema.schema"
        ) from None
    converter._rules["space"] = STRICT_SPACE_RULE  # pin it, whatever this llama-cpp-python version defaults to
    return converter.format_grammar()


def _split_type_lists(schema: Any) -> Any:
    """``{type: [string, null], format: date}`` → ``anyOf: [{type: string, format: date}, {type: null}]``.

    The converter drops ``format`` and ``pattern`` on a list of types; split, each branch keeps them, so
    the grammar constrains dates and patterns of nullable fields too.
    """
    if isinstance(schema, list):
        return [_split_type_lists(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copied = {key: _split_type_lists(value) for key, value in schema.items()}
    types = copied.get("type")
    if isinstance(types, list) and len(types) > 1:
        rest = {key: value for key, value in copied.items() if key != "type"}
        return {"anyOf": [{**rest, "type": kind} if kind != "null" else {"type": "null"} for kind in types]}
    return copied


@functools.lru_cache(maxsize=64)
def _llama_grammar_from_text(gbnf: str) -> Any:
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_string(gbnf, verbose=False)


def llama_grammar(schema: dict[str, Any]) -> Any:
    """A ``llama_cpp.LlamaGrammar`` for ``schema``, cached by the schema's JSON."""
    # Not sort_keys: property order is part of the grammar (fields come out in schema order).
    return _llama_grammar_for(json.dumps(schema))


@functools.lru_cache(maxsize=64)
def _llama_grammar_for(canonical_schema: str) -> Any:
    gbnf = json_schema_gbnf(json.loads(canonical_schema))
    try:
        return _llama_grammar_from_text(gbnf)
    except ValueError as exc:
        raise TuneloopError(
            f"llama.cpp refused the grammar made from this schema: {exc}", where="response_format.json_schema"
        ) from None


ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class Validation:
    """What checking an answer against a schema found; ``errors`` is empty when it fits."""

    valid: bool
    errors: list[str] = field(default_factory=list)
    value: Any = None


def validate_answer(text: str, schema: dict[str, Any]) -> Validation:
    """Parse ``text`` as JSON and check it against ``schema`` (formats checked, as a grammar can't)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return Validation(False, [f"not valid JSON: {exc.msg} at character {exc.pos}"])
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = [
        f"{'.'.join(str(part) for part in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(value), key=lambda error: list(error.absolute_path))
    ]
    return Validation(not errors, errors, value)


def check_schema(schema: Any, where: str) -> dict[str, Any]:
    """A request's schema, refused with the parameter named if it isn't a valid JSON Schema object."""
    if not isinstance(schema, dict):
        raise TuneloopError("must be a JSON Schema object", where=where)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise TuneloopError(f"not a valid JSON Schema: {exc.message}", where=where) from None
    return schema


def gbnf_is_strict(gbnf: str) -> bool:
    """Whether the grammar allows no whitespace beyond single spaces (used by tests and docs)."""
    space = re.search(r"^space ::= (.*)$", gbnf, flags=re.MULTILINE)
    return space is not None and space.group(1).strip() == STRICT_SPACE_RULE and "\\n" not in space.group(1)
