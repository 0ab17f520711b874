"""Query options and resource paths of SensorThings requests."""

from __future__ import annotations

import pytest

from api.sensorthings.filter import FilterError
from api.sensorthings.options import Segment, parse_options, parse_path, split_top


def test_plain_options() -> None:
    o = parse_options(
        [
            ("$top", "5"),
            ("$skip", "10"),
            ("$count", "true"),
            ("$select", "id, name"),
            ("$orderby", "name desc, @iot.id"),
            ("$filter", "name eq 'x'"),
            ("custom", "kept out"),
        ]
    )
    assert (o.top, o.skip, o.count, o.select) == (5, 10, True, ("id", "name"))
    assert [(k.text, k.desc) for k in o.orderby] == [("name desc", True), ("@iot.id", False)]
    assert o.filter_text == "name eq 'x'"


def test_nested_and_merged_expansions() -> None:
    """pyCIOT sends Datastreams, Locations and Datastreams/Observations(...) side by side."""
    o = parse_options(
        [
            (
                "$expand",
                "Datastreams,Locations,Datastreams/Observations($orderby=phenomenonTime desc;"
                "$top=1;$filter=phenomenonTime ge 2026-01-01T00:00:00Z and result gt 1)",
            )
        ]
    )
    assert list(o.expand) == ["Datastreams", "Locations"]
    inner = o.expand["Datastreams"].expand["Observations"]
    assert inner.top == 1
    assert inner.orderby[0].desc
    assert inner.filter_text.endswith("result gt 1")
    deep = parse_options([("$expand", "Datastreams($select=name;$expand=Sensor($select=name))")])
    assert deep.expand["Datastreams"].select == ("name",)
    assert deep.expand["Datastreams"].expand["Sensor"].select == ("name",)


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ([("$resultFormat", "dataArray")], "$resultFormat"),
        ([("$top", "1"), ("$top", "2")], "given twice"),
        ([("$top", "-1")], "$top"),
        ([("$skip", "x")], "$skip"),
        ([("$count", "yes")], "$count"),
        ([("$select", "a b")], "$select"),
        ([("$expand", "Datastreams($top)")], "needs a value"),
        ([("$expand", "Datastreams($top=1)/Observations")], "one pair of parentheses"),
        ([("$expand", "Datastreams($top=1")], "one pair of parentheses"),
        ([("$filter", "a eq")], "$filter"),
        ([("$orderby", "a eq")], "$orderby"),
    ],
)
def test_refused(params: list[tuple[str, str]], says: str) -> None:
    with pytest.raises(FilterError) as exc:
        parse_options(params)
    assert says in str(exc.value)


def test_paths() -> None:
    assert parse_path("Things('a''b')/Datastreams") == [
        Segment("Things", "a'b"),
        Segment("Datastreams"),
    ]
    assert parse_path("Datastreams(7)/Observations/$value") == [
        Segment("Datastreams", "7"),
        Segment("Observations"),
        Segment("$value"),
    ]
    with pytest.raises(FilterError, match="path segment"):
        parse_path("Things(x y)")


def test_split_top_respects_quotes_and_parentheses() -> None:
    assert split_top("a,b(c,d),'e,f'", ",") == ["a", "b(c,d)", "'e,f'"]
