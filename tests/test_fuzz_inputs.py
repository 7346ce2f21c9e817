"""Fuzzing the parsers that take outside input and had no fuzz test of their own: the node
config loader, rule bundles, model manifests, the auth of signed commands and camera
frames. Each gets its own error (or a `bad` frame count), never another exception.

Brief by default; ``pytest --fuzz=long`` (or CITYNEURON_FUZZ=long) runs 50x the examples.
The serial framers, NMEA, Modbus responses and command payloads are fuzzed next to their
own tests (tests/drivers/..., tests/gateway/test_command_intake.py)."""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.camera.driver import CameraConfig
from drivers.camera.source import FrameSource, open_capture
from drivers.modbus.driver import ModbusConfig
from drivers.serial.driver import SerialConfig
from gateway.authz import AuthError, CommandAuth, OperatorKey, sign_command
from gateway.config import ConfigError, config_model, load_files, validate_source
from gateway.kernel.yamlsource import SourceError, load_text
from models.package import ModelError, load_spec
from rules.bundle import BundleError, parse_bundle
from rules.compiler import compile_bundle

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MODEL = config_model([ModbusConfig, SerialConfig, CameraConfig])
KEYS = [
    "node", "id", "data_dir", "groups", "mqtt", "host", "port", "tls", "enabled", "devices",
    "type", "modbus", "serial", "camera", "unit", "profile", "dust_noise", "connection",
    "kind", "tcp", "rtu", "interval", "rules", "trusted_keys", "public_key", "roles",
    "security", "keys", "outbox", "max_bytes", "ttl", "location", "source", "fixed", "lat",
    "models", "packages", "http", "discovery", "inspection", "cameras", "points", "fps",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.sampled_from(KEYS),
    st.text(max_size=20),
)
trees = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    ),
    max_leaves=25,
)


def _config(text: str) -> None:
    try:
        source = load_text(text, "node.yaml", env={})
        config = validate_source(source, MODEL)
        load_files(config, source)
    except (SourceError, ConfigError):
        pass


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), trees, max_size=6))
def test_a_config_of_any_shape_is_accepted_or_refused_with_its_issues(doc: dict[str, Any]) -> None:
    _config(yaml.safe_dump(doc, allow_unicode=True))


@settings(deadline=None)
@given(st.text(max_size=400))
def test_any_config_text_is_accepted_or_refused_with_its_issues(text: str) -> None:
    _config(text)


BUNDLE_KEYS = [
    "version", "name", "rules", "id", "devices", "when", "clear_when", "for", "alarm",
    "event", "kind", "message", "let", "fn", "over", "point", "severity", "trigger",
    "labels", "write", "throttle", "enabled", "avg", "detections", "level > 1", "critical",
]  # fmt: skip


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=400),
        st.binary(max_size=200),
        st.dictionaries(
            st.sampled_from(BUNDLE_KEYS),
            st.recursive(
                st.one_of(
                    st.integers(-5, 10**6), st.sampled_from(BUNDLE_KEYS), st.text(max_size=30)
                ),
                lambda inner: st.one_of(
                    st.lists(inner, max_size=3),
                    st.dictionaries(st.sampled_from(BUNDLE_KEYS), inner, max_size=5),
                ),
                max_leaves=20,
            ),
            max_size=4,
        ).map(yaml.safe_dump),
    )
)
def test_any_bundle_is_compiled_or_refused_with_a_bundle_error(text: str | bytes) -> None:
    try:
        compile_bundle(parse_bundle(text))
    except BundleError as exc:
        message = exc.message
        assert message


@pytest.fixture(scope="module")
def package_dir() -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "pkg"
        shutil.copytree(FIXTURES / "models" / "yolov8-tiny", target)
        yield target


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.text(max_size=300),
        st.dictionaries(st.sampled_from(["name", "version", "file", "sha256", "input", "outputs",
                                          "labels", "task", "size", "thresholds"]),
                        trees, max_size=6).map(yaml.safe_dump),
    )
)  # fmt: skip
def test_any_model_manifest_is_loaded_or_refused_with_a_model_error(
    package_dir: Path, text: str
) -> None:
    (package_dir / "model.yaml").write_text(text, encoding="utf-8")
    try:
        load_spec(package_dir)
    except ModelError as exc:
        message = str(exc)
        assert message


OPERATOR = Ed25519PrivateKey.generate()
AUTH = CommandAuth([OperatorKey("ops", OPERATOR.public_key(), ("write:*",))], max_nonces=10**6)
TOPIC = "cityneuron/v1/n1/cmd/write"
auth_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=150),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers()),
)  # fmt: skip


@settings(deadline=None)
@given(
    st.one_of(
        auth_values,
        st.dictionaries(st.sampled_from(["key", "expires", "nonce", "sig", "x"]), auth_values),
    ),
    st.dictionaries(st.text(max_size=8), auth_values, max_size=3),
)
def test_any_auth_is_refused_with_a_reason_unless_validly_signed(auth: Any, args: Any) -> None:
    with pytest.raises(AuthError) as info:
        AUTH.authorize(TOPIC, {"args": args, "auth": auth}, "write:valve-1")
    assert info.value.code in {
        "unauthorized", "malformed_auth", "unknown_key", "bad_signature",
        "expired", "expiry_too_far",
    }  # fmt: skip


@settings(deadline=None)
@given(st.integers(0, 200), st.integers(0, 255), st.sampled_from(["args", "auth", "id"]))
def test_a_signed_command_changed_anywhere_is_refused(where: int, value: int, field: str) -> None:
    body = sign_command(TOPIC, {"id": "c1", "args": {"device": "valve-1", "value": 1}},
                        key_id="ops", private=OPERATOR)  # fmt: skip
    if field == "args":
        body["args"] = {**body["args"], "value": value + 2}
    elif field == "id":
        body["id"] = f"c{where + 2}"
    else:
        sig = bytearray(body["auth"]["sig"].encode())
        sig[where % len(sig)] = ord("A") if sig[where % len(sig)] != ord("A") else ord("B")
        body["auth"] = {**body["auth"], "sig": sig.decode()}
    with pytest.raises(AuthError) as info:
        AUTH.authorize(TOPIC, body, "write:valve-1")
    assert info.value.code == "bad_signature"


def test_a_signature_spelled_non_canonically_is_refused() -> None:
    """64 bytes take 86 base64 characters; the last one has 4 unused bits. Setting them
    decodes to the same bytes, yet the node accepts only the one canonical spelling."""
    body = sign_command(TOPIC, {"id": "c1", "args": {"device": "valve-1", "value": 1}},
                        key_id="ops", private=OPERATOR)  # fmt: skip
    sig = body["auth"]["sig"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = sig[:85] + alphabet[alphabet.index(sig[85]) ^ 0b0001] + sig[86:]
    assert twin != sig and base64.b64decode(twin) == base64.b64decode(sig)  # same bytes
    body["auth"] = {**body["auth"], "sig": twin}
    with pytest.raises(AuthError) as info:
        AUTH.authorize(TOPIC, body, "write:valve-1")
    assert info.value.code == "bad_signature"


@pytest.fixture(scope="module")
def video() -> Any:
    """An MJPG AVI of 12 frames, the kind of bytes a camera or a recording delivers."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
        rng = np.random.default_rng(1)
        for _ in range(12):
            writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        writer.release()
        yield path.read_bytes()


@settings(
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=40),
    st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_damaged_video_gives_frames_or_a_counted_loss_never_an_exception(
    video: bytes, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(video)
    for at, value in edits:
        data[at % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "damaged.avi"
        path.write_bytes(bytes(data))
        source = FrameSource(str(path), stale_after=1.0, realtime=False)
        source.lockstep = False  # take frames as fast as they decode
        cap = open_capture(str(path), 1.0)
        try:
            if cap.isOpened():
                source._read_all(cap)
        finally:
            cap.release()
    if source._frame is not None:  # what was delivered is a real colour frame
        assert source._frame.ndim == 3 and source._frame.shape[2] == 3
    assert source.stats.frames <= 12
