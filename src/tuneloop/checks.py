"""Plausibility checks on an answer: schema validity, field rules, cross-field rules, confidence.

A free-text answer (a task with ``output: text``) is checked for being there at all and for its confidence.

Cross-field rules are small expressions over the answer's fields, e.g.
``payoff_amount is null or payoff_amount >= escrow_balance``. They are parsed with Python's ``ast`` into
a whitelist of node types and evaluated by walking the tree (never ``eval``). Null follows SQL's
three-valued logic: a comparison or arithmetic with a null operand is *unknown*, and a rule fails only
when it is definitely false, so a missing value never contradicts anything by itself.
"""

from __future__ import annotations

import ast
import io
import math
import operator
import re
import tokenize
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneloop.task import Task

_LITERAL_WORDS = {"null": "None", "true": "True", "false": "False"}
_FUNCTIONS = {"len": len, "abs": abs, "min": min, "max": max, "round": round}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_UNKNOWN = object()  # the third truth value


def _translate(rule: str) -> str:
    """Rewrite the spec's null/true/false into Python's, leaving string literals alone."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(rule).readline))
    except (tokenize.TokenError, IndentationError) as exc:
        raise ValueError(f"rule does not parse: {exc}") from None
    out = [
        tok._replace(string=_LITERAL_WORDS.get(tok.string, tok.string)) if tok.type == tokenize.NAME else tok
        for tok in tokens
    ]
    return tokenize.untokenize(out).strip()


@lru_cache(maxsize=256)
def parse_rule(rule: str) -> ast.Expression:
    """Parse a rule, refusing anything but comparisons, logic, arithmetic and a few functions."""
    try:
        tree = ast.parse(_translate(rule), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"rule does not parse at column {exc.offset}: {exc.msg}") from None
    for node in ast.walk(tree):
        allowed = (
            ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
            ast.BinOp, ast.Compare, ast.Is, ast.IsNot, ast.Name, ast.Load, ast.Constant, ast.List,
            ast.Tuple, ast.Call, *_COMPARE, *_ARITHMETIC,
        )  # fmt: skip
        if not isinstance(node, allowed):
            raise ValueError(f"rule uses {type(node).__name__}, which rules do not allow")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS):
            raise ValueError(f"rule calls a function other than {', '.join(_FUNCTIONS)}")
    return tree


def rule_names(rule: str) -> set[str]:
    """The field names a rule reads."""
    tree = parse_rule(rule)
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - called - {"None", "True", "False"}


def evaluate_rule(rule: str, answer: dict[str, Any]) -> bool | None:
    """True or False, or None when nulls leave the rule undecided."""
    result = _eval(parse_rule(rule).body, answer)
    return None if result is _UNKNOWN else bool(result)


def _eval(node: ast.AST, answer: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return answer.get(node.id)
    if isinstance(node, ast.List | ast.Tuple):
        return [_eval(item, answer) for item in node.elts]
    if isinstance(node, ast.BoolOp):
        return _bool_op(node, answer)
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, answer)
        if isinstance(node.op, ast.Not):
            return _UNKNOWN if value is _UNKNOWN else not value
        if value is None or value is _UNKNOWN:
            return _UNKNOWN
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, answer), _eval(node.right, answer)
        if any(v is None or v is _UNKNOWN for v in (left, right)):
            return _UNKNOWN
        try:
            return _ARITHMETIC[type(node.op)](left, right)
        except (TypeError, ZeroDivisionError):
            return _UNKNOWN
    if isinstance(node, ast.Compare):
        return _compare(node, answer)
    if isinstance(node, ast.Call):
        args = [_eval(arg, answer) for arg in node.args]
        if any(a is None or a is _UNKNOWN for a in args):
            return _UNKNOWN
        try:
            return _FUNCTIONS[node.func.id](*args)  # type: ignore[attr-defined]
        except (TypeError, ValueError):
            return _UNKNOWN
    raise ValueError(f"unsupported node {type(node).__name__}")  # parse_rule keeps us from here


def _bool_op(node: ast.BoolOp, answer: dict[str, Any]) -> Any:
    # Kleene logic: `or` is true if any side is true, `and` false if any side is false.
    is_and = isinstance(node.op, ast.And)
    saw_unknown = False
    for operand in node.values:
        value = _eval(operand, answer)
        if value is _UNKNOWN:
            saw_unknown = True
        elif bool(value) is not is_and:
            return not is_and
    return _UNKNOWN if saw_unknown else is_and


def _compare(node: ast.Compare, answer: dict[str, Any]) -> Any:
    left = _eval(node.left, answer)
    for op, right_node in zip(node.ops, node.comparators, strict=True):
        right = _eval(right_node, answer)
        if isinstance(op, ast.Is | ast.IsNot):
            same = left is right or (left is None and right is None)
            outcome = same if isinstance(op, ast.Is) else not same
        elif any(v is None or v is _UNKNOWN for v in (left, right)):
            return _UNKNOWN
        else:
            try:
                outcome = _COMPARE[type(op)](left, right)
            except TypeError:
                return _UNKNOWN
        if not outcome:
            return False
        left = right
    return True


def run_checks(task: Task, answer: Any, confidence: float | None = None) -> list[str]:
    """Every check the answer fails, in words; an empty list means the answer is plausible."""
    from tuneloop.task import ConfidenceCheck, FieldCheck, RuleCheck

    failures = [f"schema: {problem}" for problem in task.schema_errors(answer)]
    if task.is_text:  # a text answer has no fields: only its confidence can be checked (task.py allows no other)
        checks = [check for check in task.checks if isinstance(check, ConfidenceCheck)]
        return failures + [
            f"confidence: {confidence:.3f} is below {check.min_confidence}"
            for check in checks
            if confidence is not None and confidence < check.min_confidence
        ]
    if not isinstance(answer, dict):
        return failures
    for check in task.checks:
        if isinstance(check, FieldCheck):
            failures.extend(_field_failures(check, answer.get(check.field)))
        elif isinstance(check, RuleCheck):
            if evaluate_rule(check.rule, answer) is False:
                failures.append(f"rule: {check.name or check.rule}")
        elif isinstance(check, ConfidenceCheck) and confidence is not None and confidence < check.min_confidence:
            failures.append(f"confidence: {confidence:.3f} is below {check.min_confidence}")
    return failures


def _field_failures(check: Any, value: Any) -> list[str]:
    name = check.field
    if value is None:
        return [f"{name}: is null but must be given"] if check.not_null else []
    failures = []
    if check.range is not None:
        low, high = check.range
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            failures.append(f"{name}: {value!r} is not a number in [{low:g}, {high:g}]")
        elif not low <= value <= high:
            failures.append(f"{name}: {value:g} is outside [{low:g}, {high:g}]")
    if check.pattern is not None and not re.fullmatch(check.pattern, str(value)):
        failures.append(f"{name}: {value!r} does not match {check.pattern}")
    if check.one_of is not None and value not in check.one_of:
        failures.append(f"{name}: {value!r} is not one of {check.one_of}")
    return failures
