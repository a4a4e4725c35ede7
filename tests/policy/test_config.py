"""Settings (policy/config.py): TOML file, SALLYPORT_* overrides, path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.config import Settings, default_database_url, load_settings, render_settings
from policy.errors import ConfigError

FULL = """\
data_dir = "state"
database_url = "postgresql+asyncpg://sallyport@db/sallyport"
node_name = "gw-1"

[gateway]
host = "10.0.0.5"
port = 2200
upstream_connect_timeout = 2.5

[web]
host = "0.0.0.0"
port = 9090

[recordings]
dir = "/srv/recordings"

[log]
format = "console"
level = "debug"
"""


def write(tmp_path: Path, text: str, name: str = "sallyport.toml") -> Path:
    path = tmp_path / "etc" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_load_full_file(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, FULL), env={})
    assert s.data_dir == (tmp_path / "etc" / "state").resolve()
    assert s.database_url == "postgresql+asyncpg://sallyport@db/sallyport"
    assert s.node_name == "gw-1"
    assert (s.gateway_host, s.gateway_port) == ("10.0.0.5", 2200)
    assert s.upstream_connect_timeout == 2.5
    assert (s.web_host, s.web_port) == ("0.0.0.0", 9090)
    assert s.recordings_dir == Path("/srv/recordings")
    assert (s.log_format, s.log_level) == ("console", "debug")


def test_relative_data_dir_resolves_against_the_files_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, 'data_dir = "../var/sallyport"\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = load_settings(path, env={})
    assert s.data_dir == (tmp_path / "var" / "sallyport").resolve()
    assert s.data_dir.is_absolute()


def test_defaults_follow_data_dir(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, 'data_dir = "state"\n'), env={})
    assert s.database_url == default_database_url(s.data_dir)
    assert s.database_url.startswith("sqlite+aiosqlite:///")
    assert s.recordings_dir == s.data_dir / "recordings"
    assert s.gateway_port == 2222
    assert s.vault_key_path == s.data_dir / "keys" / "vault.key"


def test_relative_recordings_dir_resolves_against_data_dir(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, 'data_dir = "state"\n[recordings]\ndir = "rec"\n'), env={})
    assert s.recordings_dir == s.data_dir / "rec"


def test_env_overrides_win_over_file(tmp_path: Path) -> None:
    env = {
        "SALLYPORT_GATEWAY_PORT": "2022",
        "SALLYPORT_LOG_LEVEL": "warning",
        "SALLYPORT_NODE_NAME": "from-env",
        "SALLYPORT_DATABASE_URL": "sqlite+aiosqlite:////tmp/env.db",
        "SALLYPORT_GATEWAY_UPSTREAM_CONNECT_TIMEOUT": "0.5",
        "UNRELATED": "ignored",
    }
    s = load_settings(write(tmp_path, FULL), env=env)
    assert s.gateway_port == 2022
    assert s.log_level == "warning"
    assert s.node_name == "from-env"
    assert s.database_url == "sqlite+aiosqlite:////tmp/env.db"
    assert s.upstream_connect_timeout == 0.5
    # untouched values still come from the file
    assert s.web_port == 9090
    assert s.gateway_host == "10.0.0.5"


def test_env_only_no_file(tmp_path: Path) -> None:
    s = load_settings(None, env={"SALLYPORT_DATA_DIR": str(tmp_path / "d")})
    assert s.data_dir == tmp_path / "d"
    assert s.recordings_dir == tmp_path / "d" / "recordings"


def test_os_environ_not_read_when_env_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SALLYPORT_GATEWAY_PORT", "1")
    s = load_settings(write(tmp_path, 'data_dir = "state"\n'), env={})
    assert s.gateway_port == 2222


def test_os_environ_read_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALLYPORT_GATEWAY_PORT", "2023")
    s = load_settings(write(tmp_path, 'data_dir = "state"\n'))
    assert s.gateway_port == 2023


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ('data_dir = "d"\nfavourite_colour = "blue"\n', "favourite_colour"),
        ('data_dir = "d"\n[gateway]\nprot = 22\n', "gateway.prot"),
        ('data_dir = "d"\n[nosuch]\nport = 22\n', "nosuch.port"),
        ('data_dir = "d"\nport = 22\n', "port"),
    ],
)
def test_unknown_setting_named(tmp_path: Path, text: str, name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, text), env={})
    assert exc.value.code == "config-invalid"
    assert name in exc.value.message


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, "[gateway]\nport = 22\n"), env={})
    assert "data_dir" in exc.value.message


def test_missing_data_dir_no_file() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, env={})
    assert "data_dir" in exc.value.message


@pytest.mark.parametrize(
    "text",
    [
        'data_dir = "d"\n[gateway]\nport = "twenty-two"\n',
        'data_dir = "d"\n[web]\nport = "0x50"\n',
        'data_dir = "d"\n[gateway]\nport = [22]\n',
        'data_dir = "d"\n[gateway]\nupstream_connect_timeout = "soon"\n',
        "data_dir = 5\n",
    ],
)
def test_bad_value_in_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, text), env={})
    assert exc.value.code == "config-invalid"


@pytest.mark.parametrize("value", ["abc", "", "22.5", "2_2x"])
def test_bad_int_in_env_names_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, 'data_dir = "d"\n'), env={"SALLYPORT_GATEWAY_PORT": value})
    assert "SALLYPORT_GATEWAY_PORT" in exc.value.message


@pytest.mark.parametrize("literal", ["22.5", "true"])
def test_non_integer_port_in_file_refused(tmp_path: Path, literal: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, f'data_dir = "d"\n[gateway]\nport = {literal}\n'), env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path / "nope.toml", env={})
    assert exc.value.code == "config-missing"


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, "data_dir = \n"), env={})
    assert exc.value.code == "config-invalid"


def round_trip(tmp_path: Path, settings: Settings) -> Settings:
    path = tmp_path / "rendered" / "sallyport.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(render_settings(settings))
    return load_settings(path, env={})


def test_render_loads_back_equal(tmp_path: Path) -> None:
    original = load_settings(write(tmp_path, FULL), env={})
    assert round_trip(tmp_path, original) == original


def test_render_loads_back_equal_with_defaults(tmp_path: Path) -> None:
    original = load_settings(None, env={"SALLYPORT_DATA_DIR": str(tmp_path / "d")})
    assert round_trip(tmp_path, original) == original


def test_render_escapes_quotes_and_backslashes(tmp_path: Path) -> None:
    original = load_settings(
        None,
        env={
            "SALLYPORT_DATA_DIR": str(tmp_path / 'we"ird\\dir'),
            "SALLYPORT_NODE_NAME": 'node "one" \\ tab\there ünïcode',
        },
    )
    assert round_trip(tmp_path, original) == original


printable = st.text(
    st.characters(min_codepoint=0x20, blacklist_characters="\x7f", blacklist_categories=["Cs"]),
    max_size=30,
)


@settings(deadline=None)
@given(
    node=printable,
    url=printable,
    host=printable,
    port=st.integers(min_value=0, max_value=65535),
    timeout=st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_property_render_round_trips(
    tmp_path_factory: pytest.TempPathFactory,
    node: str,
    url: str,
    host: str,
    port: int,
    timeout: float,
) -> None:
    tmp = tmp_path_factory.mktemp("rt")
    original = Settings(
        data_dir=tmp / "data",
        database_url=url,
        node_name=node,
        gateway_host=host,
        gateway_port=port,
        upstream_connect_timeout=timeout,
        recordings_dir=tmp / "data" / "recordings",
    )
    assert round_trip(tmp, original) == original


@pytest.mark.parametrize("name", ["line1\nline2", "bell\x07", "del\x7f"])
def test_render_control_characters_round_trip(tmp_path: Path, name: str) -> None:
    original = load_settings(
        None, env={"SALLYPORT_DATA_DIR": str(tmp_path / "d"), "SALLYPORT_NODE_NAME": name}
    )
    assert round_trip(tmp_path, original) == original


def test_session_limits_load_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "sallyport.toml"
    path.write_text('data_dir = "d"\n[session]\nwindow_warnings = "600,120"\nidle_timeout = 300\n')
    s = load_settings(path, env={"SALLYPORT_SESSION_MAX_LENGTH": "7200"})
    assert s.session_window_warnings == ("600", "120")
    assert (s.session_idle_timeout, s.session_max_length) == (300, 7200)
    again = tmp_path / "again.toml"
    again.write_text(render_settings(s))
    assert load_settings(again, env={}) == s
