"""utils.io.jsonable: dataclasses to the plain data a JSON report holds, the same for every container type."""

import json
from dataclasses import dataclass, field

from megasci.utils.io import jsonable


@dataclass(frozen=True)
class Limits:
    sizes: tuple = (1, 2)


@dataclass
class Config:
    name: str
    tags: frozenset = frozenset({"b", "a"})
    limits: Limits = field(default_factory=Limits)
    nested: dict = field(default_factory=lambda: {"pairs": [(1, 2), (3, 4)], "none": None})


def test_dataclasses_become_plain_data_with_lists_for_tuples_and_sorted_lists_for_sets():
    expected = {
        "name": "x",
        "tags": ["a", "b"],
        "limits": {"sizes": [1, 2]},
        "nested": {"pairs": [[1, 2], [3, 4]], "none": None},
    }
    assert jsonable(Config("x")) == expected
    assert json.loads(json.dumps(jsonable(Config("x")))) == expected  # already plain: JSON changes nothing
    assert jsonable(Config("x", tags=frozenset({"c", "a", "b"})))["tags"] == ["a", "b", "c"]
    assert jsonable([Limits((3,)), {"k": Limits()}]) == [{"sizes": [3]}, {"k": {"sizes": [1, 2]}}]
