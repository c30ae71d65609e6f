"""Every test that needs the real data carries the ``real_data`` marker."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


def test_every_test_using_real_data_is_marked(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    users = [i for i in items if "real_data" in getattr(i, "fixturenames", ())]
    unmarked = [i.nodeid for i in users if i.get_closest_marker("real_data") is None]
    assert not unmarked, f"tests using real_data without the marker: {unmarked}"


def test_marker_is_added_from_the_fixture(pytester: pytest.Pytester) -> None:
    """The conftest hook marks a test that reaches ``real_data`` through another fixture."""
    pytester.makeconftest(
        (Path(__file__).resolve().parents[1] / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture
        def slides(real_data):
            return real_data

        def test_indirect(slides):
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest("-m", "real_data", "--collect-only", "-q")
    out = result.stdout.str()
    assert "test_indirect" in out and "test_plain" not in out
