"""Every test that needs the real data carries the ``real_data`` marker."""

from __future__ import annotations

import pytest


def test_every_test_using_real_data_is_marked(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    users = [i for i in items if "real_data" in getattr(i, "fixturenames", ())]
    unmarked = [i.nodeid for i in users if i.get_closest_marker("real_data") is None]
    assert not unmarked, f"tests using real_data without the marker: {unmarked}"
    if len(items) > 50:  # a whole-suite run collects the tier-2 tests too
        assert users, "no test uses the real_data fixture"
