"""EnvActor with actors.robot=bridge on real parts: a MuJoCo twin served over gRPC, Valkey, weights."""

import threading
import time

import pytest

from fleetloop.actors.bridge import MujocoTwinBackend, RobotBridgeServer
from fleetloop.actors.bridge.connection import BridgeMismatch
from fleetloop.actors.env_actor import EnvActorRole
from fleetloop.actors.settings import ActorSettings
from fleetloop.config import load_config
from tests.actors.conftest import SMALL, policy_weights
from tests.bridge.conftest import metric

pytestmark = pytest.mark.timeout(120)

STEPS = 32
BRIDGE = [*SMALL, f"actors.max_steps={STEPS}", "actors.robot=bridge", "actors.dagger.mode=hg-dagger",
          "actors.dagger.gate={kind: joint, default_threshold: 0.05, patience: 1}", "actors.dagger.takeover.max_steps=8",
          "actors.dagger.takeover.hand_back=[]", "actors.dagger.pre_intervention_chunks=1",
          "bridge.reconnect_timeout_s=30"]
"""An untrained policy on a twin whose operator takes over at the first divergent plan, for 8 steps:
every takeover reaches its cap, so none is trained on, except one the episode's end cut short."""


def twin(cfg, port: int = 0) -> RobotBridgeServer:
    server = RobotBridgeServer(MujocoTwinBackend.from_sections(cfg.bridge, cfg.actors, cfg.model, cfg.actors.env),
                               port=port)
    server.start()
    return server


def discarded_for_bridge() -> float:
    return metric("fleetloop_actor_discarded_episodes_total", actor="actor-0", reason="bridge_unavailable")


def test_a_bridge_actor_writes_the_operators_takeovers_as_corrections(valkey, publisher, client, tmp_path):
    publisher, target = publisher
    cfg = load_config("smoke", BRIDGE)
    bridge = twin(cfg)
    acts = metric("fleetloop_bridge_requests_total", method="Act", code="OK")
    actor = EnvActorRole(0, ActorSettings.of(cfg), valkey.url, target, str(tmp_path / "audit"),
                         bridge_target=bridge.address)
    try:
        assert actor.collect_demos(1) == 1, "demonstrations come from the local sim"
        assert metric("fleetloop_bridge_requests_total", method="Act", code="OK") == acts
        publisher.publish(policy_weights(0))
        result = actor.run_round(0, min_version=1, timeout_s=30)
        written = actor.status()["written"]
    finally:
        actor.close()
        bridge.stop(grace=None)
    assert metric("fleetloop_bridge_requests_total", method="Act", code="OK") > acts, "the rollouts ran on the bridge"
    assert result["discarded"] == 0 and 0.0 < result["intervention_rate"] <= 1.0
    assert result["skipped"] == result["takeover_endings"].get("cap", 0) and result["takeovers"] >= 1
    corrections = [client.read_episode(i) for i in client.episode_ids("corrections")]
    assert all(ep.source == "intervention" and ep.intervened.all() and ep.labels is None for ep in corrections)
    assert len(corrections) == result["takeovers"] - result["skipped"]
    rollouts = [client.read_episode(i) for i in client.episode_ids("rollouts")]
    assert {ep.source for ep in rollouts} <= {"robot", "robot_failure", "pre_intervention"}
    assert not any(ep.intervened.any() for ep in rollouts)
    (evaluation,) = [client.read_episode(i) for i in client.episode_ids("evaluations")]
    assert len(evaluation.states) == STEPS and not evaluation.intervened.any(), "the operator only watched"
    capped = 8 * result["skipped"]
    assert sum(len(ep.states) for ep in corrections + rollouts) + capped == STEPS
    for table in ("pretrain", "rollouts", "corrections", "evaluations"):
        assert sorted(written[table]) == sorted(client.episode_ids(table)), table


def test_a_lost_bridge_discards_the_episode_and_the_actor_carries_on(valkey, publisher, client, tmp_path):
    publisher, target = publisher
    cfg = load_config("smoke", [*BRIDGE, "actors.dagger_episodes_per_round=2"])
    servers = [twin(cfg)]
    port = servers[0].port
    actor = EnvActorRole(0, ActorSettings.of(cfg), valkey.url, target, str(tmp_path / "audit"),
                         bridge_target=f"127.0.0.1:{port}")
    discarded = discarded_for_bridge()
    reconnects = metric("fleetloop_actor_bridge_reconnects_total", actor="actor-0")
    plan, plans = actor.scene._plan, []

    def plan_then_lose_the_bridge(policy, image, state, instruction):
        plans.append(state)
        if len(plans) == 2:  # the second chunk of the first episode: the bridge goes away
            servers[0].stop(grace=None)
        return plan(policy, image, state, instruction)

    def restart_once_discarded():
        deadline = time.monotonic() + 60
        while discarded_for_bridge() == discarded and time.monotonic() < deadline:
            time.sleep(0.05)
        servers.append(twin(cfg, port))  # back on the same port

    actor.scene._plan = plan_then_lose_the_bridge
    restarter = threading.Thread(target=restart_once_discarded, daemon=True)
    restarter.start()
    try:
        publisher.publish(policy_weights(0))
        result = actor.run_round(0, min_version=1, timeout_s=30)
        written = actor.status()["written"]
    finally:
        actor.close()
        restarter.join()
        for server in servers:
            server.stop(grace=None)
    assert result["discarded"] == 1
    assert discarded_for_bridge() == discarded + 1
    assert metric("fleetloop_actor_bridge_reconnects_total", actor="actor-0") == reconnects + 1
    assert result["takeovers"] >= 1, "the next DAgger episode ran on the restarted bridge"
    evaluations = [client.read_episode(i) for i in client.episode_ids("evaluations")]
    assert [len(ep.states) for ep in evaluations] == [STEPS], "and the evaluation"
    for table in ("rollouts", "corrections", "evaluations"):
        assert sorted(written[table]) == sorted(client.episode_ids(table)), table


def test_an_actor_refuses_a_bridge_of_another_robot(valkey, publisher, tmp_path):
    cfg = load_config("smoke", BRIDGE)  # a reach actor: embodiment sim_arm
    bridge = RobotBridgeServer(MujocoTwinBackend("gr1_pick_place", max_steps=24))
    bridge.start()
    try:
        with pytest.raises(BridgeMismatch) as error:
            EnvActorRole(0, ActorSettings.of(cfg), valkey.url, publisher[1], str(tmp_path / "audit"),
                         bridge_target=bridge.address)
    finally:
        bridge.stop(grace=None)
    assert "embodiment is 'gr1', the actor's model drives 'sim_arm'" in str(error.value)
    assert "state_dim is 44, the sim_arm layout has 4" in str(error.value)
