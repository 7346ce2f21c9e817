from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway.config import ConfigError, NodeConfig, load_config
from tests.helpers import CounterConfig, GaugeConfig

DRIVERS = [CounterConfig, GaugeConfig]

GOOD = """\
node:
  id: lamp-17
  groups: [district-5]
  data_dir: {data}
mqtt:
  host: ${{BROKER_HOST:-localhost}}
  tls: {{enabled: false}}
  username: node
  password: ${{file:secret.txt}}
devices:
  - type: counter
    id: c1
    interval: 0.5
  - type: gauge
    id: g1
    level: 2.5
"""


def write(tmp_path: Path, text: str, name: str = "node.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path, env: dict[str, str] | None = None) -> NodeConfig:
    return load_config(path, DRIVERS, env=env or {})


def issues(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path, env)
    return [str(i) for i in info.value.issues]


def test_valid_config_with_env_defaults_and_file_secret(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("s3cret\n", encoding="utf-8")
    path = write(tmp_path, GOOD.format(data=tmp_path))
    config = load(path)
    assert config.node.id == "lamp-17"
    assert config.mqtt is not None
    assert config.mqtt.host == "localhost"
    assert config.mqtt.effective_port == 1883
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)
    assert [d.id for d in config.devices] == ["c1", "g1"]
    assert isinstance(config.devices[0], CounterConfig)
    assert isinstance(config.devices[1], GaugeConfig)
    assert config.devices[1].level == 2.5

    config = load(path, env={"BROKER_HOST": "broker.city"})
    assert config.mqtt is not None
    assert config.mqtt.host == "broker.city"


def test_tls_is_on_by_default_with_port_8883(tmp_path: Path) -> None:
    path = write(tmp_path, "node: {id: n1}\nmqtt: {host: b}\n")
    config = load(path)
    assert config.mqtt is not None
    assert config.mqtt.tls.enabled
    assert config.mqtt.tls.verify
    assert config.mqtt.effective_port == 8883


def test_systemd_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt").write_text("pw", encoding="utf-8")
    path = write(tmp_path, "node: {id: n1}\nmqtt: {host: b, password: '${cred:mqtt}'}\n")
    config = load(path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.mqtt is not None
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "pw"
    assert issues(path) == [
        f"{path}:2:27: ${{cred:mqtt}}: CREDENTIALS_DIRECTORY is not set "
        "(systemd sets it when the unit has LoadCredential=)"
    ]


def test_unknown_key_reports_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "node:\n  id: n1\n  colour: blue\n")
    assert issues(path) == [
        f"{path}:3:3: node.colour: unknown key (not allowed here; check spelling and indentation)"
    ]


def test_every_error_is_reported_with_its_line(tmp_path: Path) -> None:
    text = """\
node:
  id: n1
mqtt:
  host: b
  port: not-a-port
  keepalive: 1
devices:
  - type: counter
    id: c1
    interval: -3
  - type: gauge
    id: g1
"""
    path = write(tmp_path, text)
    found = issues(path)
    assert len(found) == 4
    assert found[0].startswith(f"{path}:5:3: mqtt.port: must be a whole number (got")
    assert "(got 'not-a-port')" in found[0]
    assert found[1] == f"{path}:6:3: mqtt.keepalive: must be at least 5 (got 1)"
    assert found[2].startswith(f"{path}:10:5: devices[0].interval: must be greater than 0")
    # a missing key points at the mapping that lacks it
    assert found[3] == f"{path}:11:5: devices[1].level: required key is missing"


def test_unknown_driver_type_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "node: {id: n1}\ndevices:\n  - type: bacnet\n    id: x\n")
    (only,) = issues(path)
    assert only.startswith(f"{path}:3:5: devices[0]: ")
    assert "'bacnet'" in only
    assert "known driver types: counter, gauge" in only


def test_duplicate_device_ids(tmp_path: Path) -> None:
    text = "node: {id: n1}\ndevices:\n  - {type: counter, id: a}\n  - {type: counter, id: a}\n"
    path = write(tmp_path, text)
    (only,) = issues(path)
    # at the second one, in the product's words (not the validation library's)
    assert only == f"{path}:4:21: devices[1].id: device id 'a' is used more than once"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node: {id: n1\n", ":2:1: invalid YAML: while parsing a flow mapping"),
        ("node:\n  id: n1\n id: n2\n", ":3:2: invalid YAML:"),
        ("node:\n  id: n1\n  id: n2\n", ":3:3: duplicate key 'id' (first at line 2)"),
        ("node: {id: '${NODE_ID}'}\n", ":1:12: environment variable NODE_ID is not set"),
        ("node: {id: '${not valid}'}\n", ":1:12: ${not valid} is not a valid substitution"),
        ("node: {id: '${file:missing.txt}'}\n", ":1:12: ${file:missing.txt}: cannot read"),
        ("", ": file is empty"),
        ("- a\n- b\n", ":1:1: top level must be a mapping of sections"),
        ("mqtt: {host: b}\n", ":1:1: node: required key is missing"),
        ("node: {id: 'has space'}\n", ":1:8: node.id: must match the pattern"),
    ],
)
def test_malformed_files_give_positioned_messages(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    found = issues(path)
    assert len(found) == 1
    assert found[0].startswith(str(path) + expected), found[0]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert issues(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: file not found"]
    assert issues(tmp_path) == [f"{tmp_path}: is a directory, not a file"]


def test_dollar_escape_and_no_substitution_in_keys_needed(tmp_path: Path) -> None:
    path = write(tmp_path, "node: {id: n1, name: 'cost $$5 ${X:-a}'}\n")
    assert load(path).node.name == "cost $5 a"


def test_every_field_has_a_description() -> None:
    seen: set[type[BaseModel]] = set()
    missing: list[str] = []

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
            ann = field.annotation
            for sub in (*getattr(ann, "__args__", ()), ann):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    walk(sub)

    walk(NodeConfig)
    assert missing == []


def test_validation_reads_no_files_the_loading_step_does_with_the_line(tmp_path: Path) -> None:
    from drivers.modbus.driver import ModbusConfig
    from gateway.config import config_model

    text = """\
node: {id: n1}
rules:
  file: rules/missing.yaml
  trusted_keys:
    - {id: ops, public_key: not-a-key}
devices:
  - type: modbus
    id: m1
    unit: 1
    profile: ./profiles/missing.yaml
    connection: {kind: tcp, host: 127.0.0.1}
"""
    path = write(tmp_path, text)
    # the model itself accepts it: the files are not its business
    import yaml

    model = config_model([ModbusConfig])
    config = model.model_validate(yaml.safe_load(text), context={"config_dir": str(tmp_path)})
    assert config.rules.file == tmp_path / "rules" / "missing.yaml"
    assert config.devices[0].profile == str(tmp_path / "profiles" / "missing.yaml")  # type: ignore[attr-defined]
    # loading the config reads them, and each problem is at the line of its key
    with pytest.raises(ConfigError) as info:
        load_config(path, [ModbusConfig], env={})
    found = [str(i) for i in info.value.issues]
    assert found[0].startswith(f"{path}:5:17: rules.trusted_keys[0].public_key: key ops:")
    assert found[1].startswith(f"{path}:3:3: rules.file: cannot read rule bundle")
    assert found[2].startswith(
        f"{path}:10:5: devices[0].profile: profile {tmp_path / 'profiles' / 'missing.yaml'}"
    )
    assert len(found) == 3
