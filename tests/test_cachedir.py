"""The cache folder: where it is, and its JSON tables (written whole, unreadable ones ignored, unwritable ones harmless)."""

from __future__ import annotations

from orthrus_min.cachedir import CACHE_ENV, cache_dir, remember, remembered


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "orthrus_min"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "orthrus_min"


def test_a_table_keeps_every_key_and_an_unreadable_one_reads_as_empty(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert remembered("t.json") == {}  # no folder yet
    remember("t.json", "a", 1)
    remember("t.json", "b", {"4": 0.5})
    remember("t.json", "a", 2)
    assert remembered("t.json") == {"a": 2, "b": {"4": 0.5}}
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["t.json"]  # no temporary file left behind
    (tmp_path / "cache" / "t.json").write_text("[1, 2]")  # JSON, but not a table
    assert remembered("t.json") == {}
    (tmp_path / "cache" / "t.json").write_text("{half a fi")
    assert remembered("t.json") == {}


def test_a_cache_folder_that_cannot_be_made_is_not_an_error(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "a_file" / "cache"))  # a folder under a file: not even root can make it
    remember("t.json", "a", 1)
    assert remembered("t.json") == {}
