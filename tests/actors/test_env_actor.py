"""EnvActor in-process on real parts: Valkey replay, gRPC weights, MuJoCo, /metrics."""

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from fleetloop.actors.env_actor import EnvActor, EnvActorRole
from fleetloop.actors.settings import ActorSettings
from fleetloop.actors.subscriber import WeightSubscriber
from fleetloop.config import load_config
from fleetloop.replay import EmbeddedValkey, ReplayClient, ShardedReplayClient, shard_index
from fleetloop.system import DualSystemPolicy, embodiment_id, model_preset
from tests.actors.conftest import SMALL, counted, out_of_reach, policy_weights, scraped


@pytest.fixture
def actor(valkey, publisher, tmp_path):
    actor = EnvActorRole(0, ActorSettings.of(load_config("smoke", SMALL)), valkey.url, publisher[1],
                         str(tmp_path / "audit"))
    yield actor
    actor.close()


def test_rounds_write_versioned_rollouts_and_corrections(actor, publisher, client):
    publisher, _ = publisher
    corrections_before = counted("fleetloop_actor_episodes_total", actor="actor-0", table="corrections")
    assert actor.collect_demos(2) == 2, "expert demonstrations succeed"
    assert len(client.episode_ids("pretrain")) == 2

    publisher.publish(policy_weights(0))
    assert actor.wait_for_version(1, timeout_s=30)
    first = actor.run_round(0)
    assert first["versions_used"] == [1]
    assert first["eval_episodes"] == 1 and 0.0 <= first["success_rate"] <= 1.0

    publisher.publish(policy_weights(1))
    assert actor.wait_for_version(2, timeout_s=30)
    second = actor.run_round(1)
    assert second["versions_used"] == [2]
    assert second["beta"] == pytest.approx(first["beta"] * 0.5)

    status = actor.status()
    assert status["versions_applied"] == [1, 2]
    for table in ("pretrain", "rollouts", "corrections", "evaluations"):
        assert sorted(status["written"][table]) == sorted(client.episode_ids(table)), table
    versions = sorted(client.read_episode(i).policy_version for i in client.episode_ids("corrections"))
    assert versions == [1, 2], "each round's DAgger episode is relabelled; evaluations are not"
    for episode_id in client.episode_ids("corrections"):
        episode = client.read_episode(episode_id)
        assert episode.source == "relabel" and episode.actor_id == "actor-0"
        assert episode.labels.shape == (2, 16, 2), "its two planning states, each with the expert's chunk"
        assert sorted(episode.frames) == [0, 1]
    assert first["expert_label_rows"] == 2 * 16

    with urllib.request.urlopen(status["metrics"], timeout=5) as response:
        body = response.read().decode()
    assert 'fleetloop_actor_weights_version{actor="actor-0"} 2.0' in body
    assert scraped(body, "fleetloop_actor_episodes_total", actor="actor-0", table="corrections") == \
        corrections_before + 2
    assert 'fleetloop_actor_success_rate{actor="actor-0",embodiment="sim_arm",task="reach"}' in body
    assert 'fleetloop_actor_intervention_rate{actor="actor-0",embodiment="sim_arm",task="reach"}' in body
    assert 'fleetloop_actor_policy_lag_versions{actor="actor-0",embodiment="sim_arm",task="reach"} 0.0' in body


def test_an_actor_runs_on_the_collaborators_it_is_given(publisher, tmp_path):
    """EnvActor takes its replay client and weight subscriber built (here a replay sharded over two
    Valkey servers): its episodes go where that client puts them, its policy follows that subscriber."""
    with EmbeddedValkey(tmp_path / "a") as a, EmbeddedValkey(tmp_path / "b") as b:
        settings = ActorSettings.of(load_config("smoke", SMALL))
        actor = EnvActor(0, settings, ShardedReplayClient([a.url, b.url]), WeightSubscriber(publisher[1], "actor-0"),
                         str(tmp_path / "audit"))
        try:
            assert actor.collect_demos(6) == 6
            publisher[0].publish(policy_weights(0))
            assert actor.wait_for_version(1, timeout_s=30) and actor.version == 1
            written = actor.status()["written"]["pretrain"]
            for index, server in enumerate((a, b)):
                with ReplayClient(server.url) as shard:
                    assert sorted(shard.episode_ids("pretrain")) == sorted(
                        i for i in written if shard_index(i, 2) == index), f"shard {index} holds its share"
        finally:
            actor.close()
        with pytest.raises(ValueError, match="actors.robot=bridge needs a robot client"):
            EnvActor(0, ActorSettings.of(load_config("smoke", [*SMALL, "actors.robot=bridge",
                                                               "actors.dagger.mode=hg-dagger"])),
                     ReplayClient(a.url), WeightSubscriber(publisher[1], "actor-0"), str(tmp_path / "audit"))


def test_a_demonstration_cut_to_an_expert_budget_keeps_its_first_steps(actor, client):
    actor.collect_demos(1, seeds=[5])
    actor.collect_demos(1, seeds=[5], max_steps=7)
    episodes = [client.read_episode(i) for i in client.episode_ids("pretrain")]
    whole, cut = sorted(episodes, key=lambda episode: -len(episode.states))
    assert len(cut.states) == 7 < len(whole.states)
    np.testing.assert_array_equal(cut.states, whole.states[:7])
    np.testing.assert_array_equal(cut.actions, whole.actions[:7])
    with pytest.raises(ValueError, match="max_steps 0 must be >= 1"):
        actor.collect_demos(1, max_steps=0)


NICE_ACTOR = """
import os, sys
from fleetloop.actors.env_actor import EnvActorRole
from fleetloop.actors.settings import ActorSettings
from fleetloop.config import load_config
from tests.actors.conftest import SMALL
before = os.getpriority(os.PRIO_PROCESS, 0)
settings = ActorSettings.of(load_config("smoke", [*SMALL, "actors.niceness=5"]))
actor = EnvActorRole(0, settings, sys.argv[1], sys.argv[2], sys.argv[3])
print(before, os.getpriority(os.PRIO_PROCESS, 0))
actor.close()
"""


def test_actors_niceness_lowers_the_actor_process_cpu_priority(valkey, publisher, tmp_path):
    """In its own process (as in a Ray worker), an actor with actors.niceness=5 runs 5 nice levels
    below where it started, capped at 19."""
    done = subprocess.run([sys.executable, "-c", NICE_ACTOR, valkey.url, publisher[1], str(tmp_path / "audit")],
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])  # the script imports tests.actors.conftest
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split()[-2:])
    assert after == min(before + 5, 19)


def test_a_restarted_actor_keeps_its_audit_and_takes_fresh_seeds(actor, publisher, valkey, client, tmp_path):
    publisher, target = publisher
    actor.collect_demos(2)
    first_seeds = actor.episode_count
    actor.close()
    restarted = EnvActorRole(0, ActorSettings.of(load_config("smoke", SMALL)), valkey.url, target,
                             str(tmp_path / "audit"))
    try:
        assert restarted.episode_count == first_seeds == 2, "seeds continue after the episodes written before"
        with pytest.raises(TimeoutError, match="weights version 1 not applied"):
            restarted.run_round(0, min_version=1, timeout_s=0.5)
        publisher.publish(policy_weights(0))
        restarted.run_round(0, min_version=1, timeout_s=30)
        written = restarted.status()["written"]
        assert len(written["pretrain"]) == 2 and len(written["corrections"]) == 1
        for table in ("pretrain", "rollouts", "corrections", "evaluations"):
            assert sorted(written[table]) == sorted(client.episode_ids(table)), table
    finally:
        restarted.close()


def test_the_policy_runs_the_weights_it_was_sent(actor, publisher):
    publisher, _ = publisher
    weights = policy_weights(5)
    publisher.publish(weights)
    assert actor.wait_for_version(1, timeout_s=30)
    for name, tensor in weights.items():
        assert torch.equal(actor.scene.model.state_dict()[name], tensor), name


HG_DAGGER = ["actors.dagger.mode=hg-dagger", "actors.dagger.gate={kind: joint, default_threshold: 0.05, patience: 1}"]
"""An operator that takes over as soon as a plan is 0.05 rad off the expert's."""


def test_hg_dagger_round_writes_labelled_takeovers_and_the_decisions_before_them(valkey, publisher, client, tmp_path):
    publisher, target = publisher
    cfg = load_config("smoke", [*SMALL, "actors.max_steps=32", *HG_DAGGER, "actors.dagger.takeover.max_steps=8",
                                "actors.dagger.takeover.hand_back=[]"])
    actor = EnvActorRole(0, ActorSettings.of(cfg), valkey.url, target, str(tmp_path / "audit"))
    skipped_before = counted("fleetloop_actor_skipped_segments_total", actor="actor-0", reason="takeover_cap")
    try:
        publisher.publish(policy_weights(0))  # an untrained policy: the operator has to step in
        result = actor.run_round(0, min_version=1, timeout_s=30)
        with urllib.request.urlopen(actor.status()["metrics"], timeout=5) as response:
            body = response.read().decode()
    finally:
        actor.close()
    assert result["mode"] == "hg-dagger" and 0.0 < result["intervention_rate"] <= 1.0
    endings = result["takeover_endings"]
    assert endings.get("cap", 0) >= 1 and set(endings) <= {"cap", "episode_end"} and result["skipped"] == endings["cap"]
    interventions = [i for i in client.episode_ids("corrections") if client.read_episode(i).source == "intervention"]
    assert len(interventions) == result["takeovers"] - result["skipped"], "takeovers that hit their cap are not trained on"
    assert scraped(body, "fleetloop_actor_skipped_segments_total", actor="actor-0", reason="takeover_cap") == \
        skipped_before + result["skipped"]


@pytest.mark.parametrize("threshold", [0.05, 100.0])
def test_failures_nobody_took_over_are_counted_as_unflagged(valkey, publisher, tmp_path, threshold):
    publisher, target = publisher
    cfg = load_config("smoke", [*SMALL, *HG_DAGGER, "actors.dagger_episodes_per_round=3",
                                f"actors.dagger.gate={{kind: joint, default_threshold: {threshold}, patience: 1}}"])
    actor = EnvActorRole(0, ActorSettings.of(cfg), valkey.url, target, str(tmp_path / "audit"))
    try:
        publisher.publish(policy_weights(0))  # untrained: it fails unless the operator steps in
        assert actor.wait_for_version(1, timeout_s=30)
        result = actor.dagger_episodes(0, [None, None, None])
    finally:
        actor.close()
    failures = result["episodes"] - result["successes"]
    after_takeover = result["failures_after_takeover"]
    if threshold > 1:  # a gate that never fires: every failure went unseen
        assert result["takeovers"] == 0 and failures > 0 and result["unflagged_failures"] == failures
        assert after_takeover == {}
    else:  # it fires at the first plan of every episode: none went unseen
        assert result["takeovers"] >= 3 and result["unflagged_failures"] == 0
        assert sum(after_takeover.values()) == failures and set(after_takeover) <= set(result["takeover_endings"])


def test_hg_dagger_corrections_carry_the_experts_chunks(valkey, publisher, client, tmp_path):
    publisher, target = publisher
    cfg = load_config("smoke", [*SMALL, "actors.max_steps=32", *HG_DAGGER, "actors.dagger.pre_intervention_chunks=1",
                                "actors.dagger.gate={kind: joint, default_threshold: 0.05, patience: 2}"])
    actor = EnvActorRole(0, ActorSettings.of(cfg), valkey.url, target, str(tmp_path / "audit"))
    try:
        publisher.publish(policy_weights(0))
        result = actor.run_round(0, min_version=1, timeout_s=30)
    finally:
        actor.close()
    corrections = [client.read_episode(i) for i in client.episode_ids("corrections")]
    sources = sorted({ep.source for ep in corrections})
    assert sources == ["intervention", "pre_intervention_relabel"], sources
    for ep in corrections:
        assert ep.labels is not None and ep.labels.shape[1:] == (16, 2) and sorted(ep.frames) == list(range(len(ep.states)))
        if ep.source == "intervention":
            assert ep.intervened.all()
            np.testing.assert_array_equal(ep.actions, ep.labels[:, 0]), "the operator executed its chunks' first rows"
    assert set(client.priorities("corrections").values()) == {1.0}
    rollouts = [client.read_episode(i) for i in client.episode_ids("rollouts")]
    assert {ep.source for ep in rollouts} <= {"robot", "robot_failure", "pre_intervention"}
    assert all(ep.source != "robot_failure" or not ep.success for ep in rollouts)
    assert not any(ep.intervened.any() for ep in rollouts)
    steps = sum(len(ep.states) for ep in corrections if ep.source == "intervention") + sum(len(ep.states) for ep in rollouts)
    assert steps == 32, "the DAgger episode: every step in a takeover or a rollout, once"
    (evaluation,) = [client.read_episode(i) for i in client.episode_ids("evaluations")]
    assert len(evaluation.states) == 32 and evaluation.source == ("robot" if evaluation.success else "robot_failure")
    assert result["expert_label_rows"] > 0


def test_gr1_actor_fills_the_joints_its_policy_does_not_drive(valkey, publisher, client, tmp_path):
    publisher, target = publisher
    cfg = load_config("smoke", [*SMALL, "actors.env=gr1_pick_place", "actors.max_steps=24"])
    actor = EnvActorRole(0, ActorSettings.of(cfg), valkey.url, target, str(tmp_path / "audit"))
    try:
        actor.collect_demos(1)
        model = DualSystemPolicy(model_preset("tiny"))
        stats = client.compute_stats("pretrain", "gr1")
        model.set_normalization(embodiment_id("gr1"), **{k: stats[k] for k in ("state_min", "state_max", "action_min",
                                                                                "action_max")})
        publisher.publish(model.state_dict())
        actor.run_round(0, min_version=1, timeout_s=30)
    finally:
        actor.close()
    held = np.r_[13:22, 35:41, 41:44]  # legs, neck, right leg, waist: not among GR-1's 26 model actions
    for episode_id in client.episode_ids("rollouts"):
        episode = client.read_episode(episode_id)
        assert episode.embodiment == "gr1" and episode.actions.shape == (24, 44)
        chunk_starts = [t for t in range(0, 24, cfg.actors.execute_steps) if not episode.intervened[t]]
        assert chunk_starts, "the policy drove some chunks"
        for t in chunk_starts:  # held at the joint positions the chunk was planned from
            chunk = episode.actions[t:t + cfg.actors.execute_steps]
            np.testing.assert_allclose(chunk[:, held], np.broadcast_to(episode.states[t, held], chunk[:, held].shape),
                                       atol=1e-6)


def test_an_actor_discards_episodes_its_policy_broke_and_carries_on(actor, publisher, client):
    publisher, _ = publisher
    before = counted("fleetloop_actor_discarded_episodes_total", actor="actor-0", reason="policy_output")
    publisher.publish(policy_weights(0))
    actor.scene._plan = lambda policy, image, state, instruction: np.full((16, 2), np.nan, dtype=np.float32)
    result = actor.run_round(0, min_version=1, timeout_s=30)
    assert result["discarded"] == 2 and result["success_rate"] == 0.0
    assert client.episode_ids("rollouts") == [] and client.episode_ids("corrections") == []
    with urllib.request.urlopen(actor.status()["metrics"], timeout=5) as response:
        body = response.read().decode()
    assert scraped(body, "fleetloop_actor_discarded_episodes_total", actor="actor-0", reason="policy_output") == \
        before + 2
    assert actor.collect_demos(1) == 1, "the actor carries on"


def test_fixed_evaluation_seeds_replay_the_same_episodes_every_round(valkey, publisher, client, tmp_path):
    publisher, target = publisher
    cfg = load_config("smoke", [*SMALL, "actors.dagger_episodes_per_round=0", "actors.eval_episodes_per_round=2",
                                "actors.eval_seed_base=5000"])
    actor = EnvActorRole(0, ActorSettings.of(cfg), valkey.url, target, str(tmp_path / "audit"))
    try:
        publisher.publish(policy_weights(3))
        actor.run_round(0, min_version=1, timeout_s=30)
        actor.run_round(1, min_version=1, timeout_s=30)
        written = actor.status()["written"]["evaluations"]  # in the order they were written
    finally:
        actor.close()
    assert len(written) == 4 and client.episode_ids("rollouts") == [], "evaluations are kept apart"
    episodes = [client.read_episode(i) for i in written]
    first, second = episodes[:2], episodes[2:]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.array_equal(first[0].states[0], first[1].states[0]), "each evaluation episode has its own seed"


def test_fixed_dagger_seeds_revisit_the_same_scenes_every_round(valkey, publisher, client, tmp_path):
    publisher, target = publisher
    cfg = load_config("smoke", [*SMALL, "actors.dagger_episodes_per_round=2", "actors.eval_episodes_per_round=1",
                                "actors.dagger_seed_base=7000", "actors.eval_seed_base=5000"])
    actor = EnvActorRole(0, ActorSettings.of(cfg), valkey.url, target, str(tmp_path / "audit"))
    try:
        publisher.publish(policy_weights(3))
        for round_index in (0, 1):
            actor.run_round(round_index, min_version=1, timeout_s=30)
        written = [client.read_episode(i) for i in actor.status()["written"]["rollouts"]]
        evaluations = [client.read_episode(i) for i in actor.status()["written"]["evaluations"]]
    finally:
        actor.close()
    assert len(written) == 4 and len(evaluations) == 2  # per round: 2 DAgger episodes, then 1 evaluation
    first_states = [episode.states[0] for episode in written]
    for k in (0, 1):
        np.testing.assert_array_equal(first_states[k], first_states[2 + k])
    assert not np.array_equal(first_states[0], first_states[1]), "each DAgger episode has its own seed"
    assert not np.array_equal(first_states[0], evaluations[0].states[0]), "evaluation seeds differ from the DAgger seeds"


def test_a_two_robot_scene_writes_one_episode_per_robot(valkey, publisher, client, tmp_path):
    publisher, target = publisher
    cfg = load_config("smoke", ["actors.env=gr1_handover", "actors.max_steps=16", *HG_DAGGER,
                                "actors.dagger_episodes_per_round=1", "actors.eval_episodes_per_round=1"])
    actor = EnvActorRole(0, ActorSettings.of(cfg), valkey.url, target, str(tmp_path / "audit"))
    try:
        actor.collect_demos(1)
        demos = [client.read_episode(i) for i in client.episode_ids("pretrain")]
        assert sorted(ep.instruction.split()[0] for ep in demos) == ["pick", "take"], "giver and taker"
        assert all(ep.embodiment == "gr1" and len(ep.actions) == 16 for ep in demos)
        torch.manual_seed(0)
        model = DualSystemPolicy(model_preset("tiny"))  # untrained: the operators have to step in
        model.set_normalization(embodiment_id("gr1"), state_min=np.full(44, -3.0), state_max=np.full(44, 3.0),
                                action_min=np.full(26, -3.0), action_max=np.full(26, 3.0))
        publisher.publish(model.state_dict())
        result = actor.run_round(0, min_version=1, timeout_s=30)
    finally:
        actor.close()
    assert result["intervention_rate"] > 0
    corrections = [client.read_episode(i) for i in client.episode_ids("corrections")]
    assert {ep.instruction.split()[0] for ep in corrections} == {"pick", "take"}, "both robots were corrected"


def test_a_demonstration_the_expert_cannot_plan_is_discarded(valkey, publisher, client, tmp_path):
    publisher, target = publisher
    cfg = load_config("smoke", [*SMALL, "actors.env=gr1_pick_place", "actors.max_steps=16"])
    actor = EnvActorRole(0, ActorSettings.of(cfg), valkey.url, target, str(tmp_path / "audit"))
    before = counted("fleetloop_actor_discarded_episodes_total", actor="actor-0", reason="expert_unavailable")
    try:
        out_of_reach(actor.env)
        assert actor.collect_demos(2) == 0
        with urllib.request.urlopen(actor.status()["metrics"], timeout=5) as response:
            body = response.read().decode()
    finally:
        actor.close()
    assert client.episode_ids("pretrain") == [], "nothing of it is stored"
    assert scraped(body, "fleetloop_actor_discarded_episodes_total", actor="actor-0", reason="expert_unavailable") == \
        before + 2


def test_chunk_refresh_swaps_weights_mid_episode_and_every_step_keeps_its_version(valkey, publisher, client,
                                                                                     tmp_path):
    """actors.weights_refresh=chunk, in the asynchronous loop's call (collect): a version published while
    an episode runs acts from the next planning step, and the written episodes say so step by step."""
    publisher, target = publisher
    cfg = load_config("smoke", [*SMALL, "actors.max_steps=32", "actors.weights_refresh=chunk",
                                "actors.dagger.mode=hg-dagger"])  # the policy plans every chunk
    actor = EnvActorRole(0, ActorSettings.of(cfg), valkey.url, target, str(tmp_path / "audit"))
    plan = actor.scene._plan

    def publish_after_the_first_plan(policy, image, state, instruction):
        chunk = plan(policy, image, state, instruction)
        if actor.scene.version == 1 and actor.scene.held_version == 1:
            publisher.publish(policy_weights(1))
            deadline = time.monotonic() + 30
            while actor.scene.held_version < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        return chunk

    actor.scene._plan = publish_after_the_first_plan
    try:
        publisher.publish(policy_weights(0))
        assert actor.wait_for_version(1, timeout_s=30)
        result = actor.collect(1)
    finally:
        actor.close()
    assert not result["paused"] and result["episodes"] == 1 and result["version"] == 2
    assert result["episode_lags"] == [0] and result["busy_s"] > 0
    steps = {}
    for table in ("rollouts", "corrections"):
        for episode_id in client.episode_ids(table):
            episode = client.read_episode(episode_id)
            episode.validate()
            steps.update({(table, episode_id, t): episode.version_at(t) for t in range(episode.length)})
    assert set(steps.values()) == {1, 2}, "one episode: its first chunk acted with version 1, later ones with 2"
    for table, episode_id, _ in steps:
        episode = client.read_episode(episode_id)
        if episode.version_changes:  # a segment that spans the swap
            assert episode.policy_version == 1 and [v for _, v in episode.version_changes] == [2]


def test_an_episode_refresh_keeps_one_version_per_episode(actor, publisher, client):
    """actors.weights_refresh=episode (the default): a version received mid-episode waits for the next one."""
    publisher, _ = publisher
    publisher.publish(policy_weights(0))
    assert actor.wait_for_version(1, timeout_s=30)
    plan = actor.scene._plan

    def publish_mid_episode(policy, image, state, instruction):
        if actor.scene.held_version == 1:
            publisher.publish(policy_weights(1))
            deadline = time.monotonic() + 30
            while actor.scene.held_version < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        return plan(policy, image, state, instruction)

    actor.scene._plan = publish_mid_episode
    first = actor.collect(1)
    second = actor.collect(1)
    assert (first["version"], second["version"]) == (1, 2)
    for table in ("rollouts", "corrections"):
        for episode_id in client.episode_ids(table):
            assert client.read_episode(episode_id).version_changes == ()
