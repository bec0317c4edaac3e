"""Structured output: a JSON schema becomes the engine's grammar, and every answer is validated after.

llama.cpp: llama-cpp-python's own JSON-schema → GBNF converter (``llama_cpp.llama_grammar``), with
whitespace held strict: at most one space after a structural character and none anywhere else (no
newlines, no indentation), so a model cannot spend its tokens on blanks. One space is allowed because
our training targets are written with ``", "`` and ``": "`` (``Task.answer_json``); forbidding it would
push the model off the format it learned.

transformers: llguidance (Microsoft's grammar engine, also used inside llama.cpp, vLLM and SGLang) compiles
the same GBNF (through its own GBNF front end) into a token-level matcher; the backend masks each step's
logits with it (a logits processor). One grammar for both engines: llguidance's JSON-schema compiler
differs from the GBNF converter in details (it allows numbers of any length, the converter 16 digits
each side of the point), and where an answer runs into such a detail the engines would write different
JSON from the same logits. We use llguidance rather than xgrammar because its wheel has no dependencies,
while xgrammar pins its own torch/triton builds, which clash with the CPU torch we pin.

Validation after decoding is the same for every engine: ``validate_answer``.
"""

from __future__ import annotations

import ctypes
import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from tuneloop.errors import TuneloopError

# Bumped when a schema's grammar changes in either engine, so cached eval answers decoded under the old one
# are not reused (evals/store.py). 2: transformers decodes under the GBNF llama.cpp gets.
GRAMMAR_REVISION = 2

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
    if not gbnf_parses(gbnf):
        # e.g. {"enum": []}: the converter writes an empty rule that llama.cpp can't parse
        raise TuneloopError(
            "llama.cpp can't parse the grammar made from this schema (does the schema accept any value?)",
            where="response_format.json_schema.schema",
        )
    try:
        return _llama_grammar_from_text(gbnf)
    except ValueError as exc:
        raise TuneloopError(
            f"llama.cpp refused the grammar made from this schema: {exc}", where="response_format.json_schema.schema"
        ) from None


def gbnf_parses(gbnf: str) -> bool:
    """Whether llama.cpp's own parser accepts ``gbnf``.

    ``LlamaGrammar.from_string`` only stores the text: the parse happens when a sampler is built, and a
    grammar that fails there adds a null sampler that crashes the process at the first token. So every
    grammar is parsed once here, up front (no vocabulary is needed to parse).
    """
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(None, gbnf.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


def llguidance_grammar(schema: dict[str, Any]) -> str:
    """llguidance's grammar for JSON documents matching ``schema``: the GBNF llama.cpp gets, cached by the
    schema's JSON; TuneloopError naming the parameter when it can't be expressed."""
    return _llguidance_grammar_for(json.dumps(schema))


@functools.lru_cache(maxsize=64)
def _llguidance_grammar_for(canonical_schema: str) -> str:
    from llguidance import LLMatcher, grammar_from

    where = "response_format.json_schema.schema"
    gbnf = json_schema_gbnf(json.loads(canonical_schema))
    try:
        grammar = grammar_from("gbnf", gbnf)
    except ValueError as exc:
        raise TuneloopError(f"this JSON schema can't be turned into a grammar: {exc}", where=where) from None
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise TuneloopError(f"this JSON schema can't be turned into a grammar: {messages[0]}", where=where)
    return grammar


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


class LlamaGrammarFirst:
    """A llama.cpp grammar applied as llama-cpp-python's logits processor, token-first when greedy.

    llama.cpp's grammar sampler checks every token of the vocabulary against the grammar at every step
    (49k tokens for SmolLM2). Under greedy decoding only the argmax can be chosen, so it alone is checked
    first; the whole vocabulary is masked only when the grammar refuses it (llama.cpp's own
    ``common_sampler`` does the same; benchmarks/serve_bench.py measures the gain, see docs/benchmarks.md →
    Serve). Sampling at a temperature masks the whole vocabulary every step. The caller reports each chosen
    token with :meth:`accept`, and :meth:`close` frees the sampler.
    """

    def __init__(self, vocab: Any, n_vocab: int, grammar: Any, *, greedy: bool) -> None:
        import llama_cpp
        import numpy as np

        self._llama_cpp = llama_cpp
        self.greedy = greedy
        self._sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar._grammar.encode(), grammar._root.encode())
        if not self._sampler:
            raise TuneloopError("llama.cpp could not build the grammar's sampler", where="response_format")
        # llama_token_data {id, logit, p} for one token and for the whole vocabulary, reused every step.
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(self._one, 1, -1, False)
        token_data = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        self._all = np.zeros(n_vocab, dtype=token_data)
        self._all["id"] = np.arange(n_vocab)
        pointer = ctypes.cast(self._all.ctypes.data, ctypes.POINTER(llama_cpp.llama_token_data))
        self._all_array = llama_cpp.llama_token_data_array(pointer, n_vocab, -1, False)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        if self.greedy:
            best = int(np.argmax(scores))
            self._one[0].id, self._one[0].logit, self._one[0].p = best, float(scores[best]), 0.0
            self._one_array.size, self._one_array.selected = 1, -1
            self._llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(self._one_array))
            if self._one[0].logit != -np.inf:
                return scores  # the grammar allows the model's choice: nothing to mask
        self._all["logit"] = scores
        self._all_array.size, self._all_array.selected, self._all_array.sorted = len(self._all), -1, False
        self._llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(self._all_array))
        return self._all["logit"].copy()

    def accept(self, token: int) -> None:
        self._llama_cpp.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            self._llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None
