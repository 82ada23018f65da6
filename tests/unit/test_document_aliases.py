"""Registry documents may use YAML anchors and aliases, but not to stand for more than they hold: a few hundred
bytes of nested aliases expanded to 10^9 items in the gateway's event loop (minutes of one core, gigabytes)."""

from __future__ import annotations

import pytest

from switchyard_gateway.catalog.document import MAX_EXPANDED_NODES, AliasBomb, decode_document, parse


def nested_aliases(levels: int) -> str:
    """Each level a list of ten aliases of the one before: 10^levels items in about 50 bytes a level."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines)


def test_aliases_that_expand_past_the_bound_are_refused_before_anything_is_built() -> None:
    assert 10**6 >= MAX_EXPANDED_NODES             # six levels pass the bound, nine stand for 10^9 items
    for levels in (6, 9):
        with pytest.raises(AliasBomb, match="aliases expand it to"):
            decode_document(nested_aliases(levels))
    doc, problems = parse(nested_aliases(9))
    assert doc == {} and len(problems) == 1 and "not valid YAML" in problems[0].message
    assert "1,234,567,909 nodes" in problems[0].message


def test_an_alias_inside_the_node_it_names_is_refused() -> None:
    with pytest.raises(AliasBomb, match="never end"):
        decode_document("endpoints: &e [{models: *e}]")


def test_anchors_used_as_people_use_them_still_read() -> None:
    doc = decode_document(nested_aliases(4) + "\n"
                          "defaults: &d {priority: 1, weight: 2}\n"
                          "endpoints: [{<<: *d, endpoint_id: a}, {<<: *d, endpoint_id: b, weight: 3}]\n")
    assert len(doc["a3"]) == 10 and len(doc["a3"][0][0]) == 10
    assert doc["endpoints"] == [{"priority": 1, "weight": 2, "endpoint_id": "a"},
                                {"priority": 1, "weight": 3, "endpoint_id": "b"}]
    assert decode_document("") is None and decode_document("# nothing\n") is None
