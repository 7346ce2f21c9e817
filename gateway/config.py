"""The node configuration: pydantic models loaded from YAML with file:line errors.

Driver sections (``devices:``) form a union keyed on ``type``; which types exist is
decided at load time from the built-in drivers and installed plugins, so a vendor's
driver config is validated exactly like a built-in one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)

from drivers.api import DEVICE_ID_PATTERN, ConfigFileError, DriverConfig
from gateway.kernel.config_paths import CONFIG_DIR, ConfigPath
from gateway.kernel.durations import Duration
from gateway.kernel.validation import describe, redact
from gateway.kernel.yamlsource import Source, SourceError, load_file

if TYPE_CHECKING:
    from gateway.plugins import DriverRegistry

NODE_ID_PATTERN = DEVICE_ID_PATTERN


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSection(Section):
    id: str = Field(
        pattern=NODE_ID_PATTERN,
        description="Node id, unique in the fleet; used in MQTT topics and the client id.",
    )
    name: str | None = Field(default=None, description="Human-readable name of the node.")
    groups: list[Annotated[str, Field(pattern=NODE_ID_PATTERN)]] = Field(
        default_factory=list,
        description="Fleet groups the node belongs to; it accepts commands sent to them.",
    )
    data_dir: Path = Field(
        default=Path("/var/lib/cityneuron"),
        description="Directory for durable state: outbox, rule bundles, models.",
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto",
        description="The event loop: uvloop (the same behaviour, less CPU) or Python's "
        "own; auto takes uvloop where it is installed.",
    )

    @model_validator(mode="after")
    def _event_loop_installed(self) -> NodeSection:
        if self.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError(
                "event_loop: uvloop is not installed here (pip install uvloop, "
                "or event_loop: auto to use it where it is)"
            )
        return self


class LogSection(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level of log records written."
    )
    format: Literal["text", "json"] = Field(
        default="text", description="text for people (journal), json for log shippers."
    )


class TlsSection(Section):
    enabled: bool = Field(default=True, description="Use TLS to the broker (on by default).")
    ca_file: Path | None = Field(
        default=None,
        description="CA bundle that signs the broker's certificate; "
        "the system's trust store when unset.",
    )
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM).")
    key_file: Path | None = Field(default=None, description="Client private key (PEM).")
    verify: bool = Field(
        default=True,
        description="Verify the broker's certificate and host name. Never disable in the field.",
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsSection:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttSection(Section):
    host: str = Field(description="Broker host name or address.")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Broker port; 8883 with TLS, 1883 without."
    )
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version.")
    tls: TlsSection = Field(default_factory=TlsSection, description="TLS settings.")
    username: str | None = Field(default=None, description="User name for the broker.")
    password: SecretStr | None = Field(
        default=None,
        description="Password; write ${file:/path} or ${cred:name} instead of the secret.",
    )
    client_id: str | None = Field(
        default=None, description="MQTT client id; the node id when unset."
    )
    keepalive: int = Field(default=30, ge=5, le=3600, description="Keepalive in seconds.")
    topic_prefix: str = Field(
        default="cityneuron/v1", description="Prefix of every topic the node uses."
    )
    telemetry_format: Literal[1, 2] = Field(
        default=2,
        description="Telemetry messages: 2, a poll's readings as columns (docs/mqtt-api.md); "
        "1, an object per reading, for back ends written against it.",
    )
    max_inflight: int = Field(
        default=32,
        ge=1,
        le=200,
        description="QoS 1 publishes awaiting PUBACK at once; on a busy node the round "
        "trip grows, and this window is what keeps delivery up.",
    )
    reconnect_max: Duration = Field(
        default=60.0, ge=0.1, le=3600, description="Longest wait between reconnect attempts."
    )
    max_command_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest command payload accepted."
    )
    reply_prefixes: list[str] = Field(
        default_factory=list,
        description="Topic prefixes replies may be sent under (e.g. ops/replies/); empty: "
        "any topic outside the cityneuron prefix, or this node's own replies.",
    )

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls.enabled else 1883


class TtlSection(Section):
    alarm: Duration = Field(default=30 * 86400.0, description="How long alarms are kept.")
    event: Duration = Field(
        default=7 * 86400.0, description="How long detections and other events are kept."
    )
    telemetry: Duration = Field(default=2 * 86400.0, description="How long readings are kept.")


class OutboxSection(Section):
    path: Path | None = Field(
        default=None, description="SQLite file of the outbox; data_dir/outbox.db when unset."
    )
    max_bytes: ByteSize = Field(
        default=ByteSize(256 * 1024 * 1024),
        ge=1024 * 1024,
        description="Disk budget of the outbox (e.g. 256MB); oldest telemetry goes first.",
    )
    commit_interval: Duration = Field(
        default=0.2,
        ge=0,
        le=5,
        description="Seconds telemetry may wait to be committed together (one fsync and "
        "fewer, fuller messages per batch); an event or alarm is committed without waiting.",
    )
    fsync: Literal["full", "normal"] = Field(
        default="full",
        description="full: every commit survives power loss; normal: survives a crash only.",
    )
    batch_max: int = Field(
        default=100, ge=1, le=10000, description="Most readings in one telemetry message."
    )
    ttl: TtlSection = Field(default_factory=TtlSection, description="Time to live per class.")

    def resolved_path(self, data_dir: Path) -> Path:
        return self.path if self.path is not None else data_dir / "outbox.db"


class FixedLocation(Section):
    lat: float = Field(ge=-90, le=90, description="Latitude, decimal degrees (WGS 84).")
    lon: float = Field(ge=-180, le=180, description="Longitude, decimal degrees (WGS 84).")
    alt: float | None = Field(default=None, description="Altitude in metres.")


class LocationSection(Section):
    source: str | None = Field(
        default=None,
        pattern=DEVICE_ID_PATTERN,
        description="Id of the GPS device (a serial device with the nmea_gps profile).",
    )
    fixed: FixedLocation | None = Field(
        default=None, description="Position of a node that does not move (lamp post)."
    )
    stale_after: Duration = Field(
        default=5.0, gt=0, description="A fix older than this is reported as stale."
    )

    @model_validator(mode="after")
    def _one(self) -> LocationSection:
        if self.source is not None and self.fixed is not None:
            raise ValueError("give either source (a GPS device) or fixed, not both")
        return self


class HttpSection(Section):
    enabled: bool = Field(default=True, description="Serve /healthz, /readyz and /metrics.")
    host: str = Field(
        default="127.0.0.1", description="Address to bind; keep localhost unless firewalled."
    )
    port: int = Field(default=9102, ge=0, le=65535, description="TCP port (0: any free one).")


class DiscoverySection(Section):
    enabled: bool = Field(
        default=True, description="Announce the node on the LAN (mDNS, _cityneuron._tcp)."
    )
    interfaces: list[str] = Field(
        default_factory=list, description="IPv4 addresses to announce on (all when empty)."
    )


class ModelsSection(Section):
    packages: dict[str, ConfigPath] = Field(
        default_factory=dict,
        description="Model packages by name: a folder with model.onnx and model.yaml.",
    )
    threads: int = Field(default=2, ge=1, le=64, description="onnxruntime threads per model.")
    watchdog: Duration = Field(
        default=10.0, gt=0, description="An inference taking longer is reported as hung."
    )
    store: ConfigPath | None = Field(
        default=None,
        description="Folder model packages are pushed to; models.swap loads only from "
        "inside it (default: data_dir/models).",
    )

    def resolved_store(self, data_dir: Path) -> Path:
        return self.store or data_dir / "models"


class InspectionSeverity(Section):
    major: float = Field(
        default=0.01,
        gt=0,
        le=1,
        description="Share of the frame a defect's box covers at its closest to be major.",
    )
    critical: float = Field(
        default=0.05, gt=0, le=1, description="Share of the frame for a critical defect."
    )

    @model_validator(mode="after")
    def _order(self) -> InspectionSeverity:
        if self.critical < self.major:
            raise ValueError("severity.critical must be at least severity.major")
        return self


class InspectionSection(Section):
    enabled: bool = Field(
        default=False, description="Merge camera detections into geotagged defect reports."
    )
    cameras: list[str] = Field(
        default_factory=list, description="Camera device ids to follow (all when empty)."
    )
    labels: list[str] = Field(
        default_factory=list, description="Detection labels that are defects (all when empty)."
    )
    radius: float = Field(
        default=10.0,
        gt=0,
        le=1000,
        description="Metres within which a defect seen again is the same defect.",
    )
    gap: Duration = Field(
        default=3.0, gt=0, description="A defect not seen for this long has been passed."
    )
    min_sightings: int = Field(
        default=2, ge=1, description="Frames a defect must be seen in to be reported."
    )
    match_distance: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="Largest move of a box between sightings, as a share of the frame diagonal.",
    )
    ahead: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="Metres ahead of the GPS antenna where the camera sees a defect closest.",
    )
    severity: InspectionSeverity = Field(
        default_factory=InspectionSeverity, description="Size-based severity thresholds."
    )


ROLE_PATTERN = r"^(\*|rules|models|write:\S+)$"
Role = Annotated[str, Field(pattern=ROLE_PATTERN, max_length=134)]


class TrustedKey(Section):
    id: str = Field(min_length=1, max_length=64, description="Key id named by deployments.")
    public_key: str = Field(description="Ed25519 public key: base64 of 32 bytes, or PEM.")
    roles: list[Role] = Field(
        default_factory=lambda: ["rules"],
        description="What the key may sign: write:<device pattern> (write:valve-*), rules, "
        "models, or * for all.",
    )


class OperatorKey(TrustedKey):
    roles: list[Role] = Field(
        min_length=1,
        description="What the key may sign: write:<device pattern> (write:valve-*), rules, "
        "models, or * for all.",
    )


class SecuritySection(Section):
    keys: list[OperatorKey] = Field(
        default_factory=list,
        description="Operator keys trusted for signed commands (and, with role rules, rule "
        "bundles); list several to rotate.",
    )
    require_signed_commands: bool = Field(
        default=True,
        description="Refuse unsigned writes, deploys, rollbacks and model swaps (keep it on).",
    )
    max_command_lifetime: Duration = Field(
        default=3600.0,
        ge=10.0,
        le=7 * 86400.0,
        description="Longest validity a signed command may carry (bounds replay memory).",
    )
    audit_file: ConfigPath | None = Field(
        default=None,
        description="Audit log of state-changing commands "
        "(default: data_dir/audit/commands.jsonl).",
    )

    def resolved_audit(self, data_dir: Path) -> Path:
        return self.audit_file or data_dir / "audit" / "commands.jsonl"


class RulesSection(Section):
    file: ConfigPath | None = Field(
        default=None,
        description="A local rule bundle, run while no bundle has been deployed remotely.",
    )
    trusted_keys: list[TrustedKey] = Field(
        default_factory=list,
        description="Keys whose signatures deployments must carry; list several to rotate.",
    )
    require_signature: bool = Field(
        default=True, description="Refuse unsigned remote deployments (keep it on)."
    )
    max_bundle_bytes: ByteSize = Field(
        default=ByteSize(256 * 1024), ge=1024, description="Largest bundle accepted."
    )
    max_eval_time: Duration = Field(
        default=0.05,
        gt=0,
        le=10.0,
        description="Longest one evaluation of one rule may take; a rule taking longer is "
        "disabled and reported (rule.error) until a bundle changes it.",
    )


class NodeConfig(Section):
    """The whole configuration of one node."""

    node: NodeSection = Field(description="Identity of the node.")
    log: LogSection = Field(default_factory=LogSection, description="Logging.")
    mqtt: MqttSection | None = Field(
        default=None, description="Upstream broker; without it the node only stores data."
    )
    outbox: OutboxSection = Field(
        default_factory=OutboxSection, description="Durable store-and-forward buffer."
    )
    location: LocationSection = Field(
        default_factory=LocationSection, description="Where the node is (GPS or fixed)."
    )
    rules: RulesSection = Field(
        default_factory=RulesSection, description="Rule engine and remote deployment."
    )
    security: SecuritySection = Field(
        default_factory=SecuritySection, description="Who may change the node: operator keys."
    )
    http: HttpSection = Field(
        default_factory=HttpSection, description="Health and metrics endpoints."
    )
    discovery: DiscoverySection = Field(
        default_factory=DiscoverySection, description="Announcing the node on the LAN."
    )
    models: ModelsSection = Field(
        default_factory=ModelsSection, description="ONNX models for the cameras."
    )
    inspection: InspectionSection = Field(
        default_factory=InspectionSection, description="Road inspection (defect reports)."
    )
    devices: list[DriverConfig] = Field(
        default_factory=list, description="Devices the node reads; each picks a driver by type."
    )

    @model_validator(mode="after")
    def _inspection(self) -> NodeConfig:
        ins = self.inspection
        if not ins.enabled:
            return self
        if self.location.source is None and self.location.fixed is None:
            raise ValueError(
                "inspection needs a location: set location.source to the GPS device "
                "(defects are placed by position)"
            )
        ids = {d.id for d in self.devices}
        for camera in ins.cameras:
            if camera not in ids:
                raise ValueError(f"inspection camera {camera!r} is not a configured device")
        return self

    @model_validator(mode="after")
    def _unique_keys(self) -> NodeConfig:
        seen: set[str] = set()
        keys: list[tuple[tuple[str | int, ...], TrustedKey]] = [
            *(
                (("rules", "trusted_keys", i, "id"), k)
                for i, k in enumerate(self.rules.trusted_keys)
            ),
            *((("security", "keys", i, "id"), k) for i, k in enumerate(self.security.keys)),
        ]
        for loc, key in keys:
            if key.id in seen:
                raise LocatedError(loc, f"key id {key.id!r} is used more than once")
            seen.add(key.id)
        return self

    def trusted_keys(self) -> list[TrustedKey]:
        """Every trusted key with its roles: the operator keys and the bundle keys."""
        return [*self.security.keys, *self.rules.trusted_keys]

    @model_validator(mode="after")
    def _unique_devices(self) -> NodeConfig:
        seen: set[str] = set()
        for i, device in enumerate(self.devices):
            if device.id in seen:
                raise LocatedError(
                    ("devices", i, "id"), f"device id {device.id!r} is used more than once"
                )
            seen.add(device.id)
            model = getattr(device, "model", None)
            if isinstance(model, str) and model not in self.models.packages:
                known = ", ".join(sorted(self.models.packages)) or "none"
                raise ValueError(
                    f"device {device.id!r} uses model {model!r}, which is not in the models "
                    f"section (configured: {known})"
                )
        source = self.location.source
        if source is not None and source not in seen:
            raise ValueError(f"location.source {source!r} is not one of the devices")
        return self


class ConfigIssue(BaseModel):
    """One problem in a config file."""

    file: str
    line: int | None
    column: int | None
    where: str
    message: str

    def __str__(self) -> str:
        pos = self.file
        if self.line is not None:
            pos += f":{self.line}"
            if self.column is not None:
                pos += f":{self.column}"
        return f"{pos}: {self.where}: {self.message}" if self.where else f"{pos}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; `issues` lists every problem with its position."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def config_model(driver_configs: Sequence[type[DriverConfig]]) -> type[NodeConfig]:
    """`NodeConfig` whose ``devices`` accept exactly the given driver config types."""
    if not driver_configs:
        return NodeConfig
    device: Any
    if len(driver_configs) == 1:
        device = driver_configs[0]
    else:
        device = Annotated[Union[tuple(driver_configs)], Field(discriminator="type")]  # noqa: UP007
    model: type[NodeConfig] = create_model(
        "NodeConfig",
        __base__=NodeConfig,
        devices=(
            list[device],
            Field(
                default_factory=list,
                description="Devices the node reads; each picks a driver by type.",
            ),
        ),
    )
    return model


def _where(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _message(err: Mapping[str, Any], tags: set[str], secrets: Sequence[str] = ()) -> str:
    """A validation error in the product's words, never echoing a substituted secret."""
    return redact(_reworded(err, tags), secrets)


class LocatedError(ValueError):
    """A check of a whole section that knows which item is wrong (`loc` below it)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _reworded(err: Mapping[str, Any], tags: set[str]) -> str:
    kind = err["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        known = ", ".join(sorted(tags)) or "none installed"
        got = err.get("ctx", {}).get("tag", err.get("input"))
        what = f"unknown device type {got!r}" if kind == "union_tag_invalid" else "no type"
        return f"{what} (known driver types: {known})"
    return describe(err)


def validate_source(source: Source, model: type[NodeConfig]) -> NodeConfig:
    """Validate loaded YAML against `model`; every problem becomes a positioned issue."""
    data = source.data
    if data is None:
        raise ConfigError(
            [
                ConfigIssue(
                    file=source.file, line=None, column=None, where="", message="file is empty"
                )
            ]
        )
    if not isinstance(data, dict):
        raise ConfigError(
            [
                ConfigIssue(
                    file=source.file,
                    line=1,
                    column=1,
                    where="",
                    message="top level must be a mapping of sections",
                )
            ]
        )
    try:
        return model.model_validate(data, context={CONFIG_DIR: str(Path(source.file).parent)})
    except ValidationError as exc:
        tags = _driver_tags(model)
        issues = []
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            located = err.get("ctx", {}).get("error")
            if isinstance(located, LocatedError):
                loc = (*loc, *located.loc)
            pos = source.locate(loc)
            issues.append(
                ConfigIssue(
                    file=source.file,
                    line=pos[0] if pos else None,
                    column=pos[1] if pos else None,
                    where=_where(_strip_tags(source, loc)),
                    message=_message(err, tags, source.secrets),
                )
            )
        issues += _load_what_validated(source, model, exc)
        raise ConfigError(issues) from None


def _load_what_validated(
    source: Source, model: type[NodeConfig], exc: ValidationError
) -> list[ConfigIssue]:
    """The file problems of the devices that did validate, so that one run of
    check-config reports every problem even when another part of the file is wrong."""
    device_errors = [err["loc"] for err in exc.errors() if err["loc"][:1] == ("devices",)]
    failed = {loc[1] for loc in device_errors if len(loc) > 1}
    if any(len(loc) == 1 for loc in device_errors) or not all(isinstance(i, int) for i in failed):
        return []  # devices itself is malformed
    raw = source.data.get("devices") if isinstance(source.data, dict) else None
    if not isinstance(raw, list):
        return []
    device_type = get_args(model.model_fields["devices"].annotation)[0]
    adapter: TypeAdapter[DriverConfig] = TypeAdapter(device_type)
    context = {CONFIG_DIR: str(Path(source.file).parent)}
    issues: list[ConfigIssue] = []
    for i, entry in enumerate(raw):
        if i in failed:
            continue
        try:
            adapter.validate_python(entry, context=context).load_files()
        except ValidationError:
            continue
        except ConfigFileError as err:
            issues.append(_issue(source, ("devices", i, err.field), err.message))
    return issues


def _issue(source: Source, loc: tuple[str | int, ...], message: str) -> ConfigIssue:
    pos = source.locate(loc)
    return ConfigIssue(
        file=source.file,
        line=pos[0] if pos else None,
        column=pos[1] if pos else None,
        where=_where(loc),
        message=message,
    )


def _strip_tags(source: Source, loc: Sequence[str | int]) -> list[str | int]:
    """Drop the union tag pydantic inserts (devices.0.modbus.port -> devices[0].port)."""
    node: Any = source.data
    out: list[str | int] = []
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return out


def _driver_tags(model: type[NodeConfig]) -> set[str]:
    tags: set[str] = set()
    pending: list[Any] = [model.model_fields["devices"].annotation]
    while pending:
        tp = pending.pop()
        if isinstance(tp, type) and issubclass(tp, DriverConfig):
            literal = get_args(tp.model_fields["type"].annotation)
            tags.update(a for a in literal if isinstance(a, str))
        pending.extend(get_args(tp))
    return tags


def load_config(
    path: str | Path,
    driver_configs: Sequence[type[DriverConfig]] | None = None,
    env: Mapping[str, str] | None = None,
) -> NodeConfig:
    """Load and validate the node config at `path`; raises `ConfigError` on any problem.

    `driver_configs` defaults to the built-in drivers plus installed plugins.
    """
    registry = None
    if driver_configs is None:
        from gateway.plugins import load_drivers  # noqa: PLC0415 - plugins import config

        registry = load_drivers()
        driver_configs = registry.config_models()
    try:
        source = load_file(path, env)
    except SourceError as exc:
        raise ConfigError(
            [
                ConfigIssue(
                    file=exc.file, line=exc.line, column=exc.column, where="", message=exc.message
                )
            ]
        ) from None
    config = validate_source(source, config_model(driver_configs))
    load_files(config, source, registry)
    return config


def load_files(config: NodeConfig, source: Source, registry: DriverRegistry | None = None) -> None:
    """Read and check what the validated config names on disk or in text (rule bundle,
    trusted keys, every device's profile) and, given the `registry`, whether its drivers
    have what they need installed; each problem becomes an issue at the line of the key
    that names it. The one place where loading a config does I/O."""
    issues: list[ConfigIssue] = []

    def issue(loc: tuple[str | int, ...], message: str) -> None:
        issues.append(_issue(source, loc, message))

    rules = config.rules
    if config.trusted_keys():
        from rules.signing import load_public  # noqa: PLC0415 - cryptography, with keys only

        for where, keys in (
            (("rules", "trusted_keys"), rules.trusted_keys),
            (("security", "keys"), config.security.keys),
        ):
            for i, key in enumerate(keys):
                try:
                    load_public(key.public_key)
                except (ValueError, TypeError) as exc:
                    issue((*where, i, "public_key"), f"key {key.id}: {exc}")
    if rules.file is not None:
        from rules.bundle import BundleError, parse_bundle  # noqa: PLC0415
        from rules.compiler import compile_bundle  # noqa: PLC0415

        try:
            compile_bundle(parse_bundle(rules.file.read_text(encoding="utf-8")))
        except OSError as exc:
            issue(("rules", "file"), f"cannot read rule bundle {rules.file}: {exc.strerror}")
        except BundleError as exc:
            issue(("rules", "file"), f"rule bundle {rules.file}: {exc}")
    for i, device in enumerate(config.devices):
        unmet = registry.unmet(device.type) if registry is not None else None
        if unmet is not None and device.enabled:
            issue(("devices", i, "type"), unmet)
            continue
        try:
            device.load_files()
        except ConfigFileError as exc:
            issue(("devices", i, exc.field), exc.message)
    if config.models.packages and importlib.util.find_spec("onnxruntime") is None:
        issue(
            ("models", "packages"),
            "models need onnxruntime, not installed here; pip install 'cityneuron[vision]' "
            "(Debian: the cityneuron-vision package)",
        )
    if issues:
        raise ConfigError(issues)
