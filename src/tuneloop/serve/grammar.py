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
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from tuneloop.errors import TuneloopError
from tuneloop.extraction import SPAN_KEYWORD, case_variants

# Bumped when a schema's grammar changes in either engine, so cached eval answers decoded under the old one
# are not reused (evals/store.py). 2: transformers decodes under the GBNF llama.cpp gets.
GRAMMAR_REVISION = 3

# What every structural position may hold: nothing or one space (see the module docstring).
STRICT_SPACE_RULE = '" "?'

# Schema keywords the GBNF converter ignores silently; they are still enforced by validation after.
_UNCONSTRAINED_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


def json_schema_gbnf(schema: dict[str, Any], *, spans: str = "automaton") -> str:
    """GBNF for JSON documents matching ``schema``, with strict whitespace; properties in schema order.

    A sub-schema carrying ``x-tuneloop-span`` (``extraction.decoding_schema``) becomes a JSON string holding a
    span of its text: with ``spans="automaton"`` as the text's suffix automaton written as GBNF rules (one rule
    per state; llama.cpp parses 6k of them in ~15 ms), with ``spans="placeholder"`` as a placeholder literal
    that ``llguidance_grammar`` replaces with llguidance's own substring lexeme (its GBNF front end takes
    seconds over thousands of rules, its substring lexeme milliseconds). Both accept the same strings.
    """
    return _convert(schema, spans)[0]


def _convert(schema: dict[str, Any], spans: str) -> tuple[str, dict[str, list[str]]]:
    """The GBNF, and the span placeholders it holds (placeholder literal → the texts it stands for, each as
    its JSON units: see ``json_units``)."""
    if not isinstance(schema, dict):
        raise TuneloopError("a JSON schema must be an object", where="response_format.json_schema.schema")
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    converter = _Converter(prop_order={name: index for index, name in enumerate(properties)}, spans=spans)
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
    return converter.format_grammar(), converter.placeholders


def _converter_class() -> type:
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):
        """llama-cpp-python's converter, plus span sub-schemas (see ``json_schema_gbnf``)."""

        def __init__(self, *, prop_order: dict[str, int], spans: str) -> None:
            super().__init__(prop_order=prop_order, allow_fetch=False, dotall=False, raw_pattern=False)
            self.span_mode = spans
            self.placeholders: dict[str, list[list[str]]] = {}  # placeholder literal → the span's texts (units)
            self.automata: dict[str, str] = {}  # text → its automaton's root rule (fields over one input share it)

        def visit(self, schema: Any, name: str) -> str:
            span = schema.get(SPAN_KEYWORD) if isinstance(schema, dict) else None
            if not isinstance(span, dict):
                return super().visit(schema, name)
            rule_name = name or "root"
            texts = [json_units(text) for text in _span_texts(span)]
            if self.span_mode == "placeholder":
                placeholder = f"tlspan-{uuid.uuid4().hex}"
                self.placeholders[placeholder] = texts
                piece = self._add_rule(f"{rule_name}-span", _gbnf_literal(placeholder))
            else:
                piece = self._add_span_automata(f"{rule_name}-span", texts)
            joined = f'{piece} (" " {piece})*' if span.get("join") else piece
            return self._add_rule(rule_name, f'"\\"" {joined} "\\"" space')

        def _add_span_automata(self, name: str, texts: list[list[str]]) -> str:
            roots = []
            for units in texts:
                key = "".join(units)
                if key not in self.automata:
                    self.automata[key] = _add_automaton(self, f"span{len(self.automata)}", units)
                roots.append(self.automata[key])
            return self._add_rule(name, " | ".join(roots))

    return Converter


def _Converter(**kwargs: Any) -> Any:
    return _converter_class()(**kwargs)


def _span_texts(span: dict[str, Any]) -> list[str]:
    text = str(span.get("text", ""))
    return case_variants(text) if span.get("case") == "any" else [text]


def _gbnf_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _add_automaton(converter: Any, name: str, units: list[str]) -> str:
    """Rules accepting exactly the non-empty runs of consecutive ``units`` (the text's JSON units): their
    suffix automaton, one rule per state (every state accepts: any prefix of a run is one). Returns the
    root rule's name."""
    edges = suffix_automaton(units)
    for state in range(len(edges) - 1, -1, -1):
        alternatives = " | ".join(f"{_gbnf_literal(unit)} {name}-{target}" for unit, target in edges[state].items())
        optional = f"({alternatives})?" if alternatives else '""'  # every state but the start may stop here
        body = alternatives if state == 0 else optional
        converter._rules[f"{name}-{state}" if state else name] = body
    return name


def json_units(text: str) -> list[str]:
    """``text`` as it is written inside a JSON string, one unit per character: ``a``, ``\\"``, ``\\n``,
    ``\\u0000``. A copied value is a run of whole units, so it never starts or ends inside an escape."""
    return [json.dumps(char, ensure_ascii=False)[1:-1] for char in text]


def suffix_automaton(text: Sequence[Hashable]) -> list[dict[Any, int]]:
    """The transitions of ``text``'s suffix automaton (state 0 the start): a DFA of at most 2n states whose
    paths from the start spell exactly the substrings of ``text``."""
    length, link, edges = [0], [-1], [{}]
    last = 0
    for char in text:  # characters, or any symbols (JSON units)
        current = len(length)
        length.append(length[last] + 1)
        link.append(0)
        edges.append({})
        state = last
        while state != -1 and char not in edges[state]:
            edges[state][char] = current
            state = link[state]
        if state != -1:
            target = edges[state][char]
            if length[state] + 1 == length[target]:
                link[current] = target
            else:  # split: a clone of target that stops at this shorter length
                clone = len(length)
                length.append(length[state] + 1)
                link.append(link[target])
                edges.append(dict(edges[target]))
                while state != -1 and edges[state].get(char) == target:
                    edges[state][char] = clone
                    state = link[state]
                link[target] = clone
                link[current] = clone
        last = current
    return edges


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
    try:
        grammar = grammar_from("lark", llguidance_lark(json.loads(canonical_schema)))
    except ValueError as exc:
        raise TuneloopError(f"this JSON schema can't be turned into a grammar: {exc}", where=where) from None
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise TuneloopError(f"this JSON schema can't be turned into a grammar: {messages[0]}", where=where)
    return grammar


def llguidance_lark(schema: dict[str, Any]) -> str:
    """The schema's grammar in llguidance's Lark: the GBNF llama.cpp gets, converted by llguidance's own
    converter, with each span placeholder replaced by a substring lexeme over the same text(s)."""
    from llguidance.gbnf_to_lark import GbnfToLarkError, gbnf_to_lark

    gbnf, placeholders = _convert(schema, "placeholder")
    try:
        lark = gbnf_to_lark(gbnf)
    except GbnfToLarkError as exc:
        raise TuneloopError(
            f"this JSON schema can't be turned into a grammar: {exc}", where="response_format"
        ) from None
    for placeholder, texts in placeholders.items():
        # substring_chunks: runs of whole chunks, so a span never starts or ends inside an escape (\" \\ \n)
        lexemes = " | ".join("%regex " + json.dumps({"substring_chunks": units}) for units in texts)
        # substring lexemes take the empty string too; the automaton does not (a copied value has a character)
        lark = lark.replace(_gbnf_literal(placeholder), f"(({lexemes}) & /(.|\\n)+/)")
    return lark


def schema_has_spans(schema: Any) -> bool:
    """Whether a schema holds a span sub-schema (``x-tuneloop-span``): its grammar is per request."""
    if isinstance(schema, dict):
        return SPAN_KEYWORD in schema or any(schema_has_spans(value) for value in schema.values())
    if isinstance(schema, list):
        return any(schema_has_spans(item) for item in schema)
    return False


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


class ForcedTokens:
    """The tokens a grammar leaves no choice about, so they can be appended in one step (llama.cpp).

    In a task's JSON the keys, their quotes and colons and the closing brace are fixed: about a third of
    an extraction answer. Instead of one decode step per token (each costing a pass over the model), such
    a run is appended with the preceding sampled token in one batch. llguidance's fast-forward tokens over
    the same grammar the llama.cpp sampler enforces (``llguidance_lark``) give the run: the forced bytes
    as the tokenizer writes them, holding back a last token that could still merge with what follows.
    A matcher that falls out of step with the sampler (a token it would refuse) stops forcing: the answer
    is then decoded token by token, as without it. Off by default (``LlamaCppOptions.forced_tokens``): one
    step over several tokens rounds differently from several steps, which flipped 2.8 % of the demo
    model's fields in near ties (docs/benchmarks.md, Extraction levers).
    """

    def __init__(self, tokenizer: Any, schema: dict[str, Any]) -> None:
        from llguidance import LLMatcher

        self._matcher = LLMatcher(tokenizer, llguidance_grammar(schema), log_level=0)
        self.active = not self._matcher.is_error()

    def initial(self) -> list[int]:
        """The tokens forced before the model chooses anything (e.g. an opening brace)."""
        return self._forced()

    def after(self, token: int) -> list[int]:
        """The tokens forced after the model chose ``token`` ([] when none, or once out of step)."""
        if not self.active:
            return []
        if not self._matcher.consume_token(token):
            self.active = False
            return []
        return self._forced()

    def _forced(self) -> list[int]:
        if not self.active:
            return []
        forced = list(self._matcher.compute_ff_tokens())
        if forced and not self._matcher.consume_tokens(forced):
            self.active = False
            return []
        return forced
