"""Each Lua script is sent as its own text with the _lib.lua helpers it uses
(scripts.py): first, or at its `-- @helpers` line. Redis must compile every
one, and reserve.lua's helpers must sit on its rare path, where they cost a
granted call nothing."""

from __future__ import annotations

import re
from importlib import resources

import pytest
import redis
from budgetd.scripts import HELPERS_MARKER, Script

NAMES = sorted(p.name[:-4] for p in (resources.files("budgetd") / "scripts").iterdir()
               if p.name.endswith(".lua") and not p.name.startswith("_"))


@pytest.mark.parametrize("name", NAMES)
def test_every_script_compiles_with_each_helper_it_uses_once(r: redis.Redis, name: str) -> None:
    source = Script(name).source
    assert r.script_load(source) == Script(name).sha
    defined = re.findall(r"^\s*local function (\w+)", source, re.M)
    assert len(defined) == len(set(defined)), defined


def test_reserve_makes_its_helpers_only_on_its_rare_path() -> None:
    source = Script("reserve").source
    marker = HELPERS_MARKER.search(source)
    assert marker is not None
    rare = source.index("if rare then")
    for helper in ("crossing_alert", "rule_thresholds", "fire"):
        at = source.index(f"local function {helper}(")
        assert rare < marker.start() < at, helper
    # Nothing but the script's header comes before its first statement.
    assert source.lstrip().startswith("-- reserve:")
