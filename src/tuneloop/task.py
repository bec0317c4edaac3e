"""The task spec: what a task asks, what its answer looks like, how answers are judged.

A task is a YAML file (see ``tasks/liability-extraction.yaml``) loaded into :class:`Task`. Every problem
in a spec is reported with the file, the line and the key (``task.yaml:14: fields.payoff.compare: ...``).
"""

from __future__ import annotations

import json
import re
import string
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from tuneloop import checks
from tuneloop.config import get_settings
from tuneloop.errors import TuneloopError
from tuneloop.licenses import check_license_id

TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
COMPARATORS = ("exact", "number", "date", "fuzzy", "enum", "list")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    """How one output field is compared with the human-verified value."""

    compare: Literal["exact", "number", "date", "fuzzy", "enum", "list"]
    tolerance: float = Field(default=0.0, ge=0, description="number: absolute tolerance")
    relative_tolerance: float = Field(default=0.0, ge=0, description="number: tolerance as a share of gold")
    threshold: float = Field(default=0.9, gt=0, le=1, description="fuzzy: minimum similarity in (0, 1]")
    values: list[str] | None = Field(default=None, description="enum: the allowed values")
    extract: Literal["verbatim", "spans"] | None = Field(
        default=None,
        description="the value is copied from the input: one span (verbatim) or several joined by spaces (spans)",
    )
    formats: list[str] | None = Field(
        default=None, description="date: the strftime formats the input prints dates in, most likely first"
    )
    canonical: str | None = Field(default=None, description="date: the strftime form the answer writes a date in")

    @field_validator("formats")
    @classmethod
    def _date_formats(cls, formats: list[str] | None) -> list[str] | None:
        if formats is not None:
            if not formats:
                raise ValueError("formats is empty: list the strftime formats dates are printed in")
            for fmt in formats:
                _check_date_format(fmt)
        return formats

    @field_validator("canonical")
    @classmethod
    def _canonical_format(cls, fmt: str | None) -> str | None:
        if fmt is not None:
            _check_date_format(fmt)
        return fmt


def _check_date_format(fmt: str) -> None:
    """A strftime format that writes a whole date (day, month, year) and only directives we can find in text."""
    from tuneloop.comparators import DATE_DIRECTIVES

    directives = re.findall(r"%(.)", fmt)
    unknown = sorted({d for d in directives if d not in DATE_DIRECTIVES})
    if unknown:
        raise ValueError(f"{fmt!r} uses %{', %'.join(unknown)}; date formats may use %{', %'.join(DATE_DIRECTIVES)}")
    has = set(directives)
    if not ({"d"} & has and {"m", "b", "B"} & has and {"Y", "y"} & has):
        raise ValueError(f"{fmt!r} is not a whole date: it needs a day (%d), a month (%m/%b/%B) and a year (%Y/%y)")


class Extraction(_Strict):
    """How an extractive field's value is matched against its input (``fields.X.extract``)."""

    whitespace: Literal["collapse", "exact"] = Field(
        default="collapse", description="collapse: any run of whitespace (line breaks too) reads as one space"
    )
    case: Literal["exact", "any"] = Field(
        default="exact", description="any: a span may also be written in lower, UPPER or Title case"
    )


class FieldCheck(_Strict):
    """A rule on one field; a null value passes (absence is judged by the schema, not by checks)."""

    field: str
    range: tuple[float, float] | None = None
    pattern: str | None = None
    one_of: list[Any] | None = None
    not_null: bool = False

    @model_validator(mode="after")
    def _one_rule(self) -> FieldCheck:
        if self.range is None and self.pattern is None and self.one_of is None and not self.not_null:
            raise ValueError("a field check needs one of: range, pattern, one_of, not_null")
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range [{self.range[0]}, {self.range[1]}] has its low end above its high end")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        return self


class RuleCheck(_Strict):
    """A cross-field rule, e.g. ``payoff_amount is null or payoff_amount >= escrow_balance``."""

    rule: str
    name: str | None = None

    @field_validator("rule")
    @classmethod
    def _parses(cls, rule: str) -> str:
        checks.parse_rule(rule)  # raises ValueError with the position of the problem
        return rule


class ConfidenceCheck(_Strict):
    """Fails when the mean token probability of the answer is below ``min_confidence``."""

    min_confidence: float = Field(gt=0, lt=1)


def _check_kind(value: Any) -> str:
    # Pick the check's model by its keys, so an error is reported against one shape, not all three.
    keys = value if isinstance(value, dict) else type(value).model_fields
    if "rule" in keys:
        return "rule-check"
    if "min_confidence" in keys:
        return "confidence-check"
    return "field-check"


Check = Annotated[
    Annotated[FieldCheck, Tag("field-check")]
    | Annotated[RuleCheck, Tag("rule-check")]
    | Annotated[ConfidenceCheck, Tag("confidence-check")],
    Discriminator(_check_kind),
]


class Requirements(_Strict):
    """What a model must meet to be worth serving: the verdict of an eval compares against these."""

    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    max_p95_latency_ms: float | None = Field(default=None, gt=0)
    max_cost_per_1k_requests_usd: float | None = Field(default=None, ge=0)


class Decoding(_Strict):
    """Decoding defaults for this task; part of a model version's identity."""

    temperature: float = Field(default=0.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=256, gt=0, le=32768)


def _license_id(text: str) -> str:
    return check_license_id(text)


class Task(_Strict):
    name: str = Field(pattern=TASK_NAME_PATTERN)
    description: str = ""
    instructions: str = Field(min_length=1)
    input: str = "{text}"
    # json: an object under output_schema, scored field by field; text: free text judged against a rubric
    # (`tuneloop eval run --judge`), since no comparator can score a summary or a reply.
    output: Literal["json", "text"] = "json"
    output_schema: dict[str, Any] | None = None
    rubric: str | None = Field(default=None, min_length=1)
    fields: dict[str, FieldSpec] = Field(default_factory=dict)
    checks: list[Check] = Field(default_factory=list)
    on_check_failure: str = "escalate"
    # A share of answers that pass their checks sent to the review queue anyway, for audit.
    audit_sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    requirements: Requirements = Field(default_factory=Requirements)
    decoding: Decoding = Field(default_factory=Decoding)
    extraction: Extraction = Field(default_factory=Extraction)
    # The licenses a base may have for a version of this task to be promoted (None: any); lowercase ids.
    licenses: list[Annotated[str, AfterValidator(_license_id)]] | None = None

    @field_validator("input")
    @classmethod
    def _template_parses(cls, template: str) -> str:
        names = _template_names(template)
        if not names:
            raise ValueError('the input template names no variable; write e.g. "{text}"')
        return template

    @field_validator("output_schema")
    @classmethod
    def _is_object_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        # Validity as JSON Schema is checked in _cross_reference_problems, where an error can carry its path.
        if schema is None:
            return None  # required of JSON tasks, refused on text ones: _output_problems says which
        if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
            raise ValueError("must be an object schema with properties (type: object, properties: {...})")
        if not schema["properties"]:
            raise ValueError("properties is empty: name at least one output field")
        return schema

    @field_validator("licenses")
    @classmethod
    def _license_ids(cls, licenses: list[str] | None) -> list[str] | None:
        if licenses is None:
            return None
        if not licenses:
            raise ValueError("an empty list allows no base at all; leave `licenses` out to allow any license")
        return list(dict.fromkeys(licenses))

    @field_validator("on_check_failure")
    @classmethod
    def _known_action(cls, action: str) -> str:
        if action in ("escalate", "reject", "pass"):
            return action
        if action.startswith("fallback:") and action.removeprefix("fallback:").strip():
            return action
        raise ValueError(f"{action!r} is not one of: escalate, reject, pass, fallback:<model>")

    # ---- derived views -------------------------------------------------------------------------
    @property
    def is_text(self) -> bool:
        """A free-text task: no schema, no fields; answers are judged against ``rubric``."""
        return self.output == "text"

    @property
    def schema(self) -> dict[str, Any]:
        """The output schema of a JSON task (a text task has none: callers branch on ``is_text`` first)."""
        if self.output_schema is None:
            raise TuneloopError(
                f"task {self.name} answers in free text (output: text): it has no output schema",
                hint="text answers are judged with `tuneloop eval run --judge MODEL`, not scored field by field",
            )
        return self.output_schema

    @property
    def field_names(self) -> list[str]:
        """Output fields in schema order (none for a text task)."""
        return [] if self.output_schema is None else list(self.output_schema["properties"])

    @property
    def input_variables(self) -> list[str]:
        return _template_names(self.input)

    def field_spec(self, field: str) -> FieldSpec:
        """The comparator of a field: as declared, else inferred from its JSON Schema."""
        if field in self.fields:
            return self.fields[field]
        return FieldSpec(compare=_default_comparator(self.schema["properties"][field]))

    def system_prompt(self) -> str:
        return self.instructions.strip()

    def build_messages(self, inputs: dict[str, Any]) -> list[dict[str, str]]:
        """The chat a model sees for one input: system instructions, then the rendered input."""
        missing = [name for name in self.input_variables if name not in inputs]
        if missing:
            raise TuneloopError(
                f"input is missing {', '.join(missing)} for task {self.name}",
                hint=f"the task's input template is {self.input!r}",
            )
        user = self.input.format_map({name: inputs[name] for name in self.input_variables})
        return [{"role": "system", "content": self.system_prompt()}, {"role": "user", "content": user}]

    def answer_json(self, fields: dict[str, Any]) -> str:
        """Canonical JSON of an answer: schema key order, compact, so training targets are consistent."""
        if self.is_text:  # a text task's answer is its text: refused rather than written as "{}"
            raise TuneloopError(f"task {self.name} answers in free text: there is no answer JSON to write")
        ordered = {name: fields.get(name) for name in self.field_names}
        return json.dumps(ordered, ensure_ascii=False, separators=(", ", ": "))

    def schema_errors(self, answer: Any, *, check_formats: bool = True) -> list[str]:
        """Why an answer does not fit the output schema (empty when it fits).

        ``check_formats=False`` follows JSON Schema's default of treating ``format`` as an annotation:
        scoring uses it, since comparators read "April 15, 2026" as a date anyway.
        """
        if self.is_text:
            return [] if isinstance(answer, str) and answer.strip() else ["(root): the answer is empty"]
        checker = jsonschema.Draft202012Validator.FORMAT_CHECKER if check_formats else None
        validator = jsonschema.Draft202012Validator(self.schema, format_checker=checker)
        return [
            f"{'.'.join(str(p) for p in err.absolute_path) or '(root)'}: {err.message}"
            for err in sorted(validator.iter_errors(answer), key=lambda e: list(e.absolute_path))
        ]

    def run_checks(self, answer: dict[str, Any] | str, confidence: float | None = None) -> list[str]:
        """The plausibility checks an answer fails, each described in words."""
        return checks.run_checks(self, answer, confidence=confidence)


def _template_names(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"the input template does not parse: {exc}") from None
    names: list[str] = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"template variable {{{name}}} must be a plain name like {{text}}")
        if name not in names:
            names.append(name)
    return names


def _default_comparator(prop: dict[str, Any]) -> str:
    types = prop.get("type", "string")
    types = [types] if isinstance(types, str) else list(types)
    if "enum" in prop:
        return "enum"
    if "array" in types:
        return "list"
    if "number" in types or "integer" in types:
        return "number"
    if prop.get("format") == "date":
        return "date"
    return "exact"


# ---- loading -------------------------------------------------------------------------------------


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key and sequence item."""


def _load_with_lines(text: str, source: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    try:
        root = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise TuneloopError(f"not valid YAML: {problem}", where=where, hint="fix the YAML syntax") from None
    lines: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = (*path, key_node.value)
                lines[key_path] = key_node.start_mark.line + 1
                walk(value_node, key_path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    if root is not None:
        walk(root, ())
    data = yaml.load(text, Loader=_LineLoader)
    return data, lines


def _line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    # The deepest prefix of the error's location that the file has (a missing key has no line of its own).
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def _describe_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _output_problems(task: Task, data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """What the output kind asks of the rest of the spec: a schema for JSON, a rubric and no fields for text."""
    if not task.is_text:
        problems = []
        if task.output_schema is None:
            problems.append((("output_schema",), "a JSON task needs output_schema (or set output: text and a rubric)"))
        if task.rubric is not None:
            problems.append((("rubric",), "a rubric judges free text: set output: text, or leave rubric out"))
        return problems
    problems = []
    if task.rubric is None or not task.rubric.strip():
        problems.append(
            (("rubric",), "a text task needs a rubric: what a good answer does, for the judge (eval run --judge)")
        )
    for key, why in (
        ("output_schema", "a text task has no schema: leave output_schema out, or set output: json"),
        ("fields", "fields are compared in JSON answers; a text task has none"),
        ("extraction", "extraction matches JSON fields to the input; a text task has none"),
    ):
        if key in data:
            problems.append(((key,), why))
    for index, check in enumerate(task.checks):
        if not isinstance(check, ConfidenceCheck):
            problems.append(
                (("checks", index), "a text task has no fields to check: only {min_confidence: ...} applies")
            )
    if task.requirements.max_error_rate is not None:
        problems.append(
            (
                ("requirements", "max_error_rate"),
                "the field error rate is measured on JSON answers; judge text with `tuneloop eval run --judge`",
            )
        )
    return problems


def _cross_reference_problems(task: Task) -> list[tuple[tuple[Any, ...], str]]:
    """Problems pydantic cannot see alone: names that must exist in the output schema."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    if task.output_schema is None:
        return problems  # a text task, or a JSON task without one (_output_problems says so)
    try:
        jsonschema.Draft202012Validator.check_schema(task.output_schema)
    except jsonschema.SchemaError as exc:
        problems.append((("output_schema", *exc.path), f"not valid JSON Schema: {exc.message}"))
    known = task.field_names
    for field, spec in task.fields.items():
        if field not in known:
            problems.append((("fields", field), f"{field!r} is not a property of output_schema ({', '.join(known)})"))
        elif spec.compare == "enum" and not (spec.values or task.output_schema["properties"][field].get("enum")):
            problems.append(
                (("fields", field, "compare"), "enum comparison needs values: [...] or an enum in the schema")
            )
    for field, spec in task.fields.items():
        if field in known:
            problems.extend(_extraction_problems(field, spec, task.output_schema["properties"][field]))
    for index, check in enumerate(task.checks):
        if isinstance(check, FieldCheck) and check.field not in known:
            problems.append((("checks", index, "field"), f"{check.field!r} is not a property of output_schema"))
        if isinstance(check, RuleCheck):
            unknown = sorted(checks.rule_names(check.rule) - set(known))
            if unknown:
                problems.append((("checks", index, "rule"), f"the rule names unknown field(s) {', '.join(unknown)}"))
    return problems


def _extraction_problems(field: str, spec: FieldSpec, prop: Any) -> list[tuple[tuple[Any, ...], str]]:
    """extract/formats/canonical only where they mean something: copyable scalars, date fields."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    kinds = prop.get("type") if isinstance(prop, dict) else None
    kinds = {kinds} if isinstance(kinds, str) else set(kinds or [])
    if spec.extract and (not kinds or kinds - {"string", "number", "integer", "null"}):
        problems.append(
            (("fields", field, "extract"), "only a string, number or integer field can be copied from the input")
        )
    if spec.extract == "spans" and kinds - {"string", "null"}:
        problems.append((("fields", field, "extract"), "spans joins pieces of text: the field must be a string"))
    for key in ("formats", "canonical"):
        if getattr(spec, key) is not None and spec.compare != "date":
            problems.append((("fields", field, key), f"{key} is for dates: set compare: date on this field"))
    if spec.canonical and isinstance(prop, dict) and prop.get("format") == "date" and spec.canonical != "%Y-%m-%d":
        problems.append(
            (("fields", field, "canonical"), "the schema says format: date (ISO), so canonical must be %Y-%m-%d")
        )
    return problems


def parse_task(text: str, source: str = "<task>") -> Task:
    """Parse and validate a task spec; every problem is reported with its line and key."""
    data, lines = _load_with_lines(text, source)
    if not isinstance(data, dict):
        raise TuneloopError("a task spec must be a YAML mapping (name:, instructions:, ...)", where=source)
    problems: list[tuple[tuple[Any, ...], str]] = []
    task: Task | None = None
    try:
        task = Task.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.endswith("-check")))
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key (check its spelling)"
            problems.append((loc, message))
    if task is not None:
        problems.extend(_output_problems(task, data))
        problems.extend(_cross_reference_problems(task))
    if problems:
        rendered = []
        for loc, message in problems:
            line = _line_of(lines, loc)
            rendered.append(f"{source}:{line or 1}: {_describe_loc(loc)}: {message}")
        first_where = rendered[0].split(": ", 1)[0]
        raise TaskSpecError(rendered, where=first_where)
    assert task is not None
    return task


class TaskSpecError(TuneloopError):
    """One or more problems in a task spec, each as ``file:line: key: message``."""

    def __init__(self, problems: list[str], where: str) -> None:
        self.problems = problems
        plural = "s" if len(problems) > 1 else ""
        super().__init__(
            f"{len(problems)} problem{plural} in the task spec:\n  " + "\n  ".join(problems),
            hint="edit the task file at the lines named above; `tuneloop task validate FILE` checks it again",
        )

    def __str__(self) -> str:  # the problems already carry file:line
        return f"{self.message}\n  fix: {self.hint}"


def packaged_task_names() -> list[str]:
    folder = resources.files("tuneloop") / "tasks"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_task(name_or_path: str | Path) -> Task:
    """A task by file path, or by name from ``$TUNELOOP_HOME/tasks`` or the packaged tasks."""
    text, source = _find_task(str(name_or_path))
    return parse_task(text, source)


def _find_task(ref: str) -> tuple[str, str]:
    path = Path(ref).expanduser()
    looks_like_path = path.suffix in (".yaml", ".yml") or "/" in ref or path.exists()
    if looks_like_path:
        if not path.is_file():
            raise TuneloopError(f"task file {ref} does not exist", hint="check the path")
        return path.read_text(encoding="utf-8"), str(path)
    return _find_named_task(ref)


def load_task_named(name: str) -> Task:
    """A task by name only, from ``$TUNELOOP_HOME/tasks`` or the packaged tasks, never a path: for names
    that come from clients (a request's ``metadata.task``). A name outside the task-name grammar is refused."""
    if not re.fullmatch(TASK_NAME_PATTERN, name):
        raise TuneloopError(
            f"{name[:80]!r} is not a task name (1-64 lowercase letters, digits, '.', '_', '-'; no paths)",
            hint="name a task of $TUNELOOP_HOME/tasks or a packaged one",
        )
    return parse_task(*_find_named_task(name))


def named_task_source(name: str) -> str:
    """Where ``load_task_named(name)`` reads the task from: its file, or ``<tuneloop>/tasks/NAME.yaml``."""
    return _find_named_task(name)[1]


def _find_named_task(ref: str) -> tuple[str, str]:
    user_file = get_settings().tasks_dir / f"{ref}.yaml"
    if user_file.is_file():
        return user_file.read_text(encoding="utf-8"), str(user_file)
    packaged = resources.files("tuneloop") / "tasks" / f"{ref}.yaml"
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8"), f"<tuneloop>/tasks/{ref}.yaml"
    known = ", ".join(packaged_task_names())
    raise TuneloopError(
        f"no task named {ref!r}",
        hint=f"give a path to a task YAML file, or one of: {known}",
    )
