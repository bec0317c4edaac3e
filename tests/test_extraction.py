"""Values copied from the input and formats enforced while decoding (extraction.py, serve/grammar.py).

The grammars are checked string by string with a byte-level tokenizer (every byte a token), so a test says
exactly which JSON documents a grammar lets a model write: the same GBNF llama.cpp gets, and the Lark with
substring lexemes that transformers and vLLM get. End to end, on every backend, the conformance suite
(test_serve_conformance.py) samples answers at temperature 1 and finds each copied value in its input.
"""

from __future__ import annotations

import json
import math
from datetime import date
from pathlib import Path

import pytest

from tuneloop.comparators import Verdict, compare_field, parse_date
from tuneloop.errors import TuneloopError
from tuneloop.extraction import (
    decoding_schema,
    field_candidates,
    find_dates,
    find_numbers,
    find_pattern,
    gold_coverage,
    source_text,
    value_in_input,
)
from tuneloop.serve.grammar import json_schema_gbnf, llguidance_lark, suffix_automaton
from tuneloop.task import parse_task

SPEC = """
name: receipts
instructions: Copy the fields.
output_schema:
  type: object
  additionalProperties: false
  required: [shop, address, code, day, total, note]
  properties:
    shop: {type: [string, "null"]}
    address: {type: [string, "null"]}
    code: {type: [string, "null"], pattern: "^[0-9]{4}$"}
    day: {type: [string, "null"], format: date}
    total: {type: [number, "null"]}
    note: {type: [string, "null"]}
fields:
  shop: {compare: fuzzy, extract: verbatim}
  address: {compare: fuzzy, extract: spans}
  code: {compare: exact, extract: verbatim}
  day: {compare: date, extract: verbatim, formats: ["%d/%m/%Y", "%d %b %Y"]}
  total: {compare: number, extract: verbatim}
"""
TEXT = (
    'KEDAI "AH SENG"\nNO 12, JALAN\n  BESAR   4821 KL\nDate: 03/04/2018  Inv 559412\nTOTAL RM 1,234.50\nexp 7 Mar 2019'
)


@pytest.fixture(scope="module")
def task():
    return parse_task(SPEC, "receipts.yaml")


# --- the spec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field_yaml", "message"),
    [
        ("{compare: exact, extract: verbatim}", "only a string, number or integer field can be copied"),
        ("{compare: date, formats: ['%d/%m/%H']}", "date formats may use"),
        ("{compare: date, formats: ['%d/%m']}", "needs a day (%d), a month (%m/%b/%B) and a year"),
        ("{compare: exact, formats: ['%d/%m/%Y']}", "formats is for dates: set compare: date"),
    ],
)
def test_a_wrong_extraction_key_names_its_line_and_field(field_yaml: str, message: str) -> None:
    spec = f"""name: t
instructions: x
output_schema:
  type: object
  properties:
    items: {{type: object}}
    when: {{type: string}}
fields:
  {"items" if "verbatim" in field_yaml else "when"}: {field_yaml}
"""
    with pytest.raises(TuneloopError) as caught:
        parse_task(spec, "t.yaml")
    assert "t.yaml:9:" in str(caught.value) and message in str(caught.value)


def test_canonical_must_agree_with_the_schemas_own_date_format() -> None:
    spec = SPEC.replace('formats: ["%d/%m/%Y", "%d %b %Y"]', 'formats: ["%d/%m/%Y"], canonical: "%d.%m.%Y"')
    with pytest.raises(TuneloopError, match="canonical must be %Y-%m-%d"):
        parse_task(spec, "receipts.yaml")


# --- finding values ----------------------------------------------------------------------------------


def test_numbers_are_found_as_printed_in_any_grouping() -> None:
    found = find_numbers("TOTAL RM 1,234.50 EU 1.234,50 tax 28,15 ref-77 x3")
    assert ("1,234.50", 1234.5) in found and ("1.234,50", 1234.5) in found and ("28,15", 28.15) in found
    assert ("-77", -77.0) in found and ("3", 3.0) in found


def test_dates_are_read_in_the_tasks_formats_first() -> None:
    assert find_dates("Date: 03/04/2018 and 7 Mar 2019, not 2018-13-45", ["%d/%m/%Y", "%d %b %Y"]) == [
        ("03/04/2018", date(2018, 4, 3)),
        ("7 Mar 2019", date(2019, 3, 7)),
    ]
    assert parse_date("03/04/2018", ["%d/%m/%Y"]) == date(2018, 4, 3)
    assert parse_date("03/04/2018") == date(2018, 3, 4)  # the default reading is American
    spec = parse_task(SPEC, "r.yaml").field_spec("day")
    assert compare_field(spec, "03/04/2018", "2018-04-03") is Verdict.CORRECT


def test_a_pattern_field_finds_overlapping_matches() -> None:
    # the last four digits of a longer number are a match, as are the first four
    assert {"5594", "9412"} <= set(find_pattern("Inv 559412", "^[0-9]{4}$"))


def test_the_decoding_schema_narrows_each_copied_field_to_its_input(task) -> None:
    schema = decoding_schema(task, TEXT)
    props = schema["properties"]
    assert props["day"] == {"enum": ["2018-04-03", "2019-03-07", None]}  # ISO: the schema says format: date
    assert 1234.5 in props["total"]["enum"] and 559412 in props["total"]["enum"] and None in props["total"]["enum"]
    assert "4821" in props["code"]["enum"] and "9412" in props["code"]["enum"]
    span = props["shop"]["anyOf"][0]["x-tuneloop-span"]
    assert span["text"] == " ".join(TEXT.split()) and span["join"] is False  # whitespace collapsed
    assert props["address"]["anyOf"][0]["x-tuneloop-span"]["join"] is True
    assert props["note"] == task.output_schema["properties"]["note"]  # not copied: untouched
    assert schema["required"] == task.output_schema["required"]


def test_a_field_with_nothing_to_copy_can_only_be_null(task) -> None:
    props = decoding_schema(task, "no numbers or dates here")["properties"]
    assert props["total"] == {"enum": [None]} and props["day"] == {"enum": [None]}


def test_value_in_input_is_the_rule_after_the_fact(task) -> None:
    assert value_in_input(task, "shop", 'KEDAI "AH SENG"', TEXT)
    assert value_in_input(task, "address", "NO 12, JALAN BESAR", TEXT)  # across a line break
    assert value_in_input(task, "address", "JALAN BESAR KL", TEXT)  # spans: pieces joined
    assert not value_in_input(task, "shop", "KEDAI AH SENG SDN BHD", TEXT)
    assert not value_in_input(task, "total", 1234.0, TEXT) and value_in_input(task, "total", 1234.5, TEXT)
    assert not value_in_input(task, "day", "2018-03-04", TEXT)  # the American reading is not a listed format
    assert value_in_input(task, "note", None, TEXT)


def test_gold_coverage_counts_the_answers_a_constraint_leaves_reachable(task) -> None:
    rows = [(TEXT, {"shop": "KEDAI", "total": 1234.5, "day": "2018-04-03"}), (TEXT, {"total": 99.0})]
    coverage = gold_coverage(task, rows)
    assert coverage["total"] == (1, 2) and coverage["shop"] == (1, 1) and coverage["day"] == (1, 1)


def test_source_text_reads_the_user_turns_only() -> None:
    messages = [
        {"role": "system", "content": "SYSTEM 999"},
        {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "ASSISTANT 123"},
        {"role": "user", "content": "last"},
    ]
    assert source_text(messages) == "part one\ntwo\nlast"


# --- the grammars, string by string ------------------------------------------------------------------


class _ByteTokenizer:
    """Every byte a token, plus an end token: a grammar then accepts or refuses exact strings."""

    def __init__(self) -> None:
        self.tokens = [bytes([value]) for value in range(256)] + [b"<eos>"]
        self.eos_token_id = 256
        self.bos_token_id = None

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


@pytest.fixture(scope="module")
def byte_tokenizer():
    from llguidance import LLTokenizer, TokenizerWrapper

    return LLTokenizer(TokenizerWrapper(_ByteTokenizer()))


def accepts(tokenizer, grammar: str, document: str) -> bool:
    from llguidance import LLMatcher

    matcher = LLMatcher(tokenizer, grammar, log_level=0)
    for byte in document.encode():
        if not matcher.consume_token(byte):
            return False
    return matcher.is_accepting()


def both_grammars(schema: dict) -> list[str]:
    """The GBNF (automaton, as llama.cpp gets it) and the Lark (substring lexemes: transformers, vLLM)."""
    from llguidance import grammar_from

    return [grammar_from("gbnf", json_schema_gbnf(schema)), grammar_from("lark", llguidance_lark(schema))]


COPY_ONE = {
    "type": "object",
    "properties": {"v": {"anyOf": [{"type": "string", "x-tuneloop-span": {"text": 'ab "c" ab'}}, {"type": "null"}]}},
    "required": ["v"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("engine", [0, 1], ids=["gbnf", "lark"])
def test_a_span_field_accepts_exactly_the_non_empty_substrings(byte_tokenizer, engine: int) -> None:
    grammar = both_grammars(COPY_ONE)[engine]
    for value in ["ab", 'b \\"c', 'ab \\"c\\" ab', "a", " "]:
        assert accepts(byte_tokenizer, grammar, '{"v": "' + value + '"}'), value
    assert accepts(byte_tokenizer, grammar, '{"v": null}')
    # nor a span that starts or ends inside an escape: `"c` or `ab \` would break the JSON string
    for value in ["", "abc", "ba", "ab ab", "x", '"c', "ab \\", "c\\"]:
        assert not accepts(byte_tokenizer, grammar, '{"v": "' + value + '"}'), value


@pytest.mark.parametrize("engine", [0, 1], ids=["gbnf", "lark"])
def test_spans_join_pieces_and_case_any_allows_the_four_casings(byte_tokenizer, engine: int) -> None:
    schema = json.loads(json.dumps(COPY_ONE))
    schema["properties"]["v"]["anyOf"][0]["x-tuneloop-span"] = {"text": "Jalan Besar, KL", "join": True, "case": "any"}
    grammar = both_grammars(schema)[engine]
    for value in ["Jalan Besar", "Jalan KL", "JALAN BESAR", "jalan", "Besar, Kl", "Jalan Besar KL"]:
        assert accepts(byte_tokenizer, grammar, '{"v": "' + value + '"}'), value
    for value in ["Jalan Raya", "jALAN", "KL  Jalan"]:
        assert not accepts(byte_tokenizer, grammar, '{"v": "' + value + '"}'), value


@pytest.mark.parametrize("engine", [0, 1], ids=["gbnf", "lark"])
def test_the_task_grammar_takes_only_the_values_its_input_holds(task, byte_tokenizer, engine: int) -> None:
    grammar = both_grammars(decoding_schema(task, TEXT))[engine]

    def answer(**fields) -> str:
        return task.answer_json({"shop": None, "address": None, "code": None, "day": None, "total": None, **fields})

    assert accepts(byte_tokenizer, grammar, answer(shop="KEDAI", total=1234.5, day="2018-04-03", code="4821"))
    assert accepts(byte_tokenizer, grammar, answer(address="JALAN BESAR 4821 KL", note="anything at all"))
    assert not accepts(byte_tokenizer, grammar, answer(total=1234.0))  # not printed
    assert not accepts(byte_tokenizer, grammar, answer(day="2018-03-04"))  # a date the text does not print
    assert not accepts(byte_tokenizer, grammar, answer(day="559412"))  # a number is not a date
    assert not accepts(byte_tokenizer, grammar, answer(code="1234"))


def test_the_suffix_automaton_spells_every_substring_and_nothing_else() -> None:
    text = "abcbc"
    edges = suffix_automaton(text)

    def walk(word: str) -> bool:
        state = 0
        for char in word:
            if char not in edges[state]:
                return False
            state = edges[state][char]
        return True

    substrings = {text[i:j] for i in range(len(text)) for j in range(i + 1, len(text) + 1)}
    for word in substrings:
        assert walk(word)
    for word in ["ca", "bb", "abcbcb", "cc"]:
        assert not walk(word)
    assert len(edges) <= 2 * len(text)


def test_field_candidates_keep_integers_for_an_integer_field(tmp_path: Path) -> None:
    spec = SPEC.replace('total: {type: [number, "null"]}', 'total: {type: [integer, "null"]}')
    task = parse_task(spec, "r.yaml")
    assert 1234.5 not in field_candidates(task, "total", "1,234.50 and 12")
    assert 12 in field_candidates(task, "total", "1,234.50 and 12")


def test_an_empty_or_huge_input_leaves_free_strings_null_or_plain(task) -> None:
    from tuneloop.extraction import MAX_SPAN_TEXT

    assert decoding_schema(task, "   ")["properties"]["shop"] == {"enum": [None]}
    huge = decoding_schema(task, "x" * (MAX_SPAN_TEXT + 1))["properties"]["shop"]
    assert huge == task.output_schema["properties"]["shop"]  # the plain schema: no 64k-rule grammar per request


def test_hostile_input_still_makes_grammars_both_engines_accept(task, byte_tokenizer) -> None:
    from tuneloop.serve.grammar import gbnf_parses

    text = 'Q"uote\\ back\tslash \x00 nul \u2028 😀 %regex {"substring_chars": "x"} ::= root 12.50 ' + "9" * 400
    schema = decoding_schema(task, text)
    numbers = [value for value in schema["properties"]["total"]["enum"] if value is not None]
    assert numbers and all(math.isfinite(value) for value in numbers)  # 400 nines are no JSON number
    gbnf, lark = both_grammars(schema)
    assert gbnf_parses(json_schema_gbnf(schema))
    shop = json.dumps("😀 %regex {", ensure_ascii=False)
    document = '{"shop": ' + shop + ', "address": null, "code": null, "day": null, "total": null, "note": null}'
    assert accepts(byte_tokenizer, gbnf, document) and accepts(byte_tokenizer, lark, document)


def test_a_number_field_with_more_numbers_than_an_enum_holds_keeps_its_plain_schema(task) -> None:
    from tuneloop.extraction import MAX_CANDIDATES

    text = " ".join(str(number) for number in range(MAX_CANDIDATES + 5))
    assert decoding_schema(task, text)["properties"]["total"] == task.output_schema["properties"]["total"]
    assert value_in_input(task, "total", 12.5, text)  # nothing was constrained, so nothing is invented
