"""Deployment: every refusal is precise and leaves the running rules alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.kernel.records import Reading
from gateway.kernel.refusal import Refused
from gateway.rules_host import RuleCommands
from rules.deploy import RuleDeployer
from rules.engine import RuleEngine
from rules.signing import generate, load_private, load_public, public_text, sign
from rules.store import RuleStore

V1 = """
version: {version}
name: district-5
rules:
  - id: lid-open
    devices: ["manhole-*"]
    when: lid_open
    alarm: {{kind: manhole_open}}
"""


@pytest.fixture(scope="module")
def keys() -> dict[str, Ed25519PrivateKey]:
    return {name: load_private(generate()[0]) for name in ("ops-1", "ops-2", "rogue")}


class Deployment(RuleCommands):
    """The node's rules.* commands over a deployer, as the uplink calls them."""

    @property
    def engine(self) -> RuleEngine:
        assert isinstance(self.deployer.engine, RuleEngine)
        return self.deployer.engine

    @property
    def store(self) -> RuleStore:
        assert isinstance(self.deployer.store, RuleStore)
        return self.deployer.store


def deployer(tmp_path: Path, keys: dict[str, Ed25519PrivateKey], **kw: object) -> Deployment:
    trusted = {name: load_public(_pub(keys[name])) for name in ("ops-1", "ops-2")}
    store = RuleStore(tmp_path / "rules")
    return Deployment(RuleDeployer(RuleEngine(), store, trusted=trusted, **kw))  # type: ignore[arg-type]


def _pub(key: Ed25519PrivateKey) -> str:
    return public_text(key.public_key())


def signed(text: str, keys: dict[str, Ed25519PrivateKey], key: str = "ops-1") -> dict[str, str]:
    return {"bundle": text, "signature": sign(text.encode(), keys[key]), "key": key}


def fires(d: Deployment) -> bool:
    d.engine.on_reading(Reading(device="manhole-1", point="lid_open", value=False), now=0)
    d.engine.on_reading(Reading(device="manhole-1", point="lid_open", value=True), now=1)
    return any(e.kind == "alarm.manhole_open" for e in d.engine.take_events())


async def test_signed_bundle_is_deployed_persisted_and_reloaded(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    d = deployer(tmp_path, keys)
    reply = await d.deploy(signed(V1.format(version=1), keys))
    assert reply == {
        "version": 1,
        "previous_version": None,
        "rules": 1,
        "dry_run": [],
        "missing_data": [],
    }
    assert fires(d)
    restarted = deployer(tmp_path, keys)
    restarted.deployer.load_stored()
    assert restarted.engine.version == 1
    assert fires(restarted)


@pytest.mark.parametrize(
    ("make", "code", "message"),
    [
        (
            lambda k: {**signed(V1.format(version=2), k), "bundle": V1.format(version=2) + "\n#x"},
            "bad_signature",
            "signature does not match the bundle for key 'ops-1'",
        ),
        (
            lambda k: signed(V1.format(version=2), k, "rogue"),
            "unknown_key",
            "key 'rogue' is not trusted (trusted: ops-1, ops-2)",
        ),
        (
            lambda k: {"bundle": V1.format(version=2)},
            "unsigned",
            "the bundle needs a signature and a key id",
        ),
        (
            lambda k: signed(V1.format(version=1), k),
            "stale_version",
            "version 1 is not newer than 1, the highest accepted so far",
        ),
        (
            lambda k: signed(
                "version: 2\nname: x\nrules:\n  - {id: a, when: x, colour: red,"
                " event: {kind: e}}\n",
                k,
            ),
            "invalid_bundle",
            "rule 1 (a): colour: unknown key",
        ),
        (
            lambda k: signed(
                "version: 2\nname: x\nrules:\n  - {id: a, when: 'x >', event: {kind: e}}\n", k
            ),
            "compile_error",
            "rule a: when does not compile",
        ),
        (
            lambda k: signed(
                "version: 2\nname: x\nrules:\n  - {id: a, devices: [manhole-1], "
                "when: 'lid_open + 1 > 0', event: {kind: e}}\n",
                k,
            ),
            "dry_run_failed",
            "rule a on manhole-1",
        ),
        (
            lambda k: signed("version: 2\nname: x\n# " + "x" * 300_000 + "\nrules: []\n", k),
            "too_large",
            "the limit is 262144",
        ),
        (lambda k: signed("[1, 2]", k), "invalid_bundle", "a bundle is a mapping"),
    ],
)
async def test_refusals_are_precise_and_the_old_rules_keep_firing(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey], make: object, code: str, message: str
) -> None:
    d = deployer(tmp_path, keys)
    await d.deploy(signed(V1.format(version=1), keys))
    d.engine.on_reading(Reading(device="manhole-1", point="lid_open", value=False), now=0)
    with pytest.raises(Refused) as info:
        await d.deploy(make(keys))  # type: ignore[operator]
    assert info.value.code == code
    assert message in info.value.message
    assert d.engine.version == 1
    assert fires(d)
    assert json.loads((tmp_path / "rules" / "current.json").read_text())["version"] == 1


async def test_key_rotation_rollback_and_no_replay_after_rollback(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    d = deployer(tmp_path, keys)
    await d.deploy(signed(V1.format(version=1), keys, "ops-1"))
    v2 = V1.format(version=2).replace("manhole_open", "lid")
    reply = await d.deploy(signed(v2, keys, "ops-2"))  # the new key is trusted too
    assert reply["previous_version"] == 1
    assert await d.rollback({}) == {"version": 1, "rolled_back_from": 2}
    assert d.engine.version == 1
    with pytest.raises(Refused, match="not newer than 2"):
        await d.deploy(signed(v2, keys, "ops-2"))  # a replay of v2 is still refused
    status = await d.status({})
    assert status["version"] == 1
    assert status["max_version"] == 2
    fresh = deployer(tmp_path / "other", keys)
    with pytest.raises(Refused) as info:
        await fresh.rollback({})
    assert info.value.code == "no_previous"


async def test_a_tampered_stored_bundle_is_not_run(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    d = deployer(tmp_path, keys)
    await d.deploy(signed(V1.format(version=1), keys))
    await d.deploy(signed(V1.format(version=2), keys))
    current = tmp_path / "rules" / "current.json"
    data = json.loads(current.read_text())
    data["text"] = data["text"].replace("lid_open", "true")
    current.write_text(json.dumps(data))
    restarted = deployer(tmp_path, keys)
    restarted.deployer.load_stored()
    assert restarted.engine.version == 1  # fell back to the previous, still verified bundle


async def test_missing_data_is_reported_not_refused(
    tmp_path: Path, keys: dict[str, Ed25519PrivateKey]
) -> None:
    d = deployer(tmp_path, keys)
    d.engine.on_reading(Reading(device="manhole-1", point="tilt", value=1.0), now=0)
    reply = await d.deploy(signed(V1.format(version=1), keys))
    assert reply["missing_data"] == [
        {"rule": "lid-open", "device": "manhole-1", "holds": None, "missing": "lid_open"}
    ]
    assert fires(d)
