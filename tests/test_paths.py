"""The data directory: LBPROXY_DATA_DIR, else the XDG data home, with one file family per endpoint."""

from __future__ import annotations

from pathlib import Path

from lbproxy.paths import data_dir, endpoint_file


def test_data_dir_env_wins():
    assert data_dir({"LBPROXY_DATA_DIR": "/srv/lbp", "XDG_DATA_HOME": "/x", "HOME": "/h"}) == Path("/srv/lbp")


def test_data_dir_follows_xdg_then_home():
    assert data_dir({"XDG_DATA_HOME": "/x", "HOME": "/h"}) == Path("/x/lbproxy")
    assert data_dir({"HOME": "/h"}) == Path("/h/.local/share/lbproxy")


def test_files_are_named_after_the_endpoint():
    assert endpoint_file("echo", "queue.db", {"LBPROXY_DATA_DIR": "/d"}) == Path("/d/echo.queue.db")
