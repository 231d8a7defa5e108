"""[[trigger]] and plan validation: the same models, one line per problem naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from agent.control.plans import parse_plan
from agent.errors import ConfigError

TRIGGER = {"name": "t", "when": "A.b > 1", "capture": ["A.*"]}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"edge": "level"}, 'trigger[0]: edge = "level" needs min_interval > 0'),
        ({"edge": "falling"}, "trigger[0].edge: Input should be 'rising' or 'level'"),
        ({"before": 601}, "trigger[0].before: Input should be less than or equal to 600"),
        (
            {"min_interval": -1},
            "trigger[0].min_interval: Input should be greater than or equal to 0",
        ),
        ({"name": "has space"}, "trigger[0].name: String should match pattern"),
        ({"when": "A.b >= "}, "trigger[0].when: column 8: expected a number"),
        ({"when": "x" * 1001}, "trigger[0].when: String should have at most 1000 characters"),
        ({"colour": 1}, "trigger[0].colour: unknown key"),
    ],
)
def test_trigger_problems_name_the_field(change: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_plan({"id": "p", "version": 1, "trigger": [{**TRIGGER, **change}]})
    assert any(p.startswith("plan 'p': ") and words in p for p in info.value.problems), (
        info.value.problems
    )


def test_every_problem_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_plan({"version": "x", "signal": [{"deadband": -1}], "trigger": [{}]})
    lines = info.value.problems
    assert len(lines) >= 5 and all("\n" not in line for line in lines)
    assert any("id: required key is missing" in line for line in lines)
    assert any("signal[0].match: required key is missing" in line for line in lines)


@pytest.mark.parametrize("doc", [b"[1, 2]", "{", b"\xff", "[" * 100_000, b"{}" * 40_000])
def test_hostile_plan_text_is_refused_clearly(doc: bytes | str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_plan(doc)
    assert info.value.problems[0].startswith("plan")
