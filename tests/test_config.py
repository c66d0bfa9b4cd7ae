from __future__ import annotations

from pathlib import Path

import pytest

from tastemaker.config import Config, ConfigError, load_config

EXAMPLE = Path(__file__).parent.parent / "docs" / "config.example.toml"


def test_the_documented_example_is_exactly_the_defaults() -> None:
    assert load_config(EXAMPLE, env={}) == Config()


def test_env_overrides_are_typed() -> None:
    c = load_config(
        env={
            "TASTEMAKER_SERVING__PORT": "9001",
            "TASTEMAKER_STORE__URL": "embedded:///srv/tm",
            "TASTEMAKER_STREAM__RUN_IN_SERVER": "false",
            "OTHER": "x",
            "TASTEMAKER_CACHE_DIR": "/tmp",
        }
    )
    assert (c.serving.port, c.store.url, c.stream.run_in_server) == (
        9001,
        "embedded:///srv/tm",
        False,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[serving]\nprot = 1\n", "prot"),
        ("[serving]\nport = 70000\n", "port"),
        ("[stream]\nsession_gap_s = -1\n", "session_gap_s"),
        ("[events]\nmax_id_bytes = 600\n", "max_id_bytes"),  # past LMDB's key limit
        ("[serving]\nmax_json_depth = 2\n", "max_json_depth"),
        ('[[features]]\nkind = "magic"\nname = "x"\n', "magic"),
        (
            '[[features]]\nkind = "count_by_type"\nname = "a"\n'
            '[[features]]\nkind = "count_by_type"\nname = "a"\n',
            "duplicate",
        ),
        ('[[features]]\nkind = "count_by_type"\nname = "a"\nfamily = "x"\n', "family"),
        ("[serving\n", "config file"),
    ],
)
def test_invalid_configs_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_bad_env_override_is_named() -> None:
    with pytest.raises(ConfigError, match="port"):
        load_config(env={"TASTEMAKER_SERVING__PORT": "eighty"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/tastemaker.toml", env={})


def test_tastemaker_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[serving]\nport = 1234\n")
    assert load_config(env={"TASTEMAKER_CONFIG": str(path)}).serving.port == 1234
    assert load_config(env={"TASTEMAKER_CONFIG": ""}) == Config()


def test_dump_config_round_trips(tmp_path: Path) -> None:
    from tastemaker.config import StoreConfig, dump_config

    config = Config(store=StoreConfig(url="redis://127.0.0.1:6379/0?prefix=x:"))
    assert load_config(dump_config(config, tmp_path / "c.toml"), env={}) == config
    assert load_config(dump_config(Config(), tmp_path / "d.toml"), env={}) == Config()


def test_variables_without_a_section_are_not_overrides() -> None:
    env = {"TASTEMAKER_TEST_REDIS_SERVER": "/usr/bin/redis-server", "TASTEMAKER_REQUIRE_X": "1"}
    assert load_config(env=env) == Config()
    with pytest.raises(ConfigError, match="TASTEMAKER_SERVING__SETTING"):
        load_config(env={"TASTEMAKER_SERVING_PORT": "9000"})
