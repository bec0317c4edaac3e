"""The model-id grammar every stage shares."""

from __future__ import annotations

import pytest

from tuneloop.errors import TuneloopError
from tuneloop.registry.ids import BaseRef, EndpointRef, VersionRef, parse_model_id


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("smollm2-135m-instruct", BaseRef("smollm2-135m-instruct")),
        ("hf:HuggingFaceTB/SmolLM2-135M-Instruct", BaseRef("hf:HuggingFaceTB/SmolLM2-135M-Instruct")),
        ("./models/mine", BaseRef("./models/mine")),
        ("liability-extraction@3", VersionRef("liability-extraction", number=3)),
        (
            "liability-extraction@sha256:0123456789ab",
            VersionRef("liability-extraction", content_hash="sha256:0123456789ab"),
        ),
        ("liability-extraction@prod", VersionRef("liability-extraction", alias="prod")),
        ("openai/gpt-4o-2024-08-06", EndpointRef("gpt-4o-2024-08-06", upstream="openai")),
        ("local/liability-extraction@prod", EndpointRef("liability-extraction@prod", upstream="local")),
        ("http://127.0.0.1:8000/v1#my-model", EndpointRef("my-model", base_url="http://127.0.0.1:8000/v1")),
    ],
)
def test_parses(text: str, expected) -> None:
    parsed = parse_model_id(text)
    assert parsed == expected
    assert str(parsed) == text or isinstance(parsed, EndpointRef)


def test_only_aliases_are_mutable() -> None:
    assert parse_model_id("t@3").is_immutable
    assert not parse_model_id("t@prod").is_immutable


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("t@0", "count from 1"),
        ("t@sha256:abc", "12 to 64"),
        ("t@Prod!", "neither"),
        ("Bad Task@3", "not a task name"),
        ("http://host/v1", "after '#'"),
    ],
)
def test_malformed_ids_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(TuneloopError) as caught:
        parse_model_id(text)
    assert words in str(caught.value)
