"""The typed configuration: presets, overrides, and errors that name the field."""

import re

import pytest

from fleetloop.config import (
    MAX_CONFIG_BYTES,
    MAX_SECRET_BYTES,
    ConfigError,
    FleetloopConfig,
    apply_override,
    load_config,
    preset_names,
)


def test_presets_load_and_validate():
    assert {"default", "smoke"} <= set(preset_names())
    for name in preset_names():
        assert isinstance(load_config(name), FleetloopConfig)


def test_default_preset_is_the_embedded_default():
    cfg = load_config()
    assert cfg == load_config("default") == FleetloopConfig(), "default.yaml must restate the code defaults"
    assert cfg.replay.url is None
    assert cfg.model.preset == "tiny"


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config("default", ["learner.lr=0.001", "actors.num_actors=3", "replay.url=redis://h:1/0"])
    assert cfg.learner.lr == pytest.approx(0.001)
    assert cfg.actors.num_actors == 3
    assert cfg.replay.url == "redis://h:1/0"


def test_override_of_nested_mapping():
    cfg = load_config("default", ["replay.mixture={pretrain: 1.0}"])
    assert cfg.replay.mixture == {"pretrain": 1.0}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        pytest.param("learner.bogus=1", "learner.bogus: unknown field", id="unknown-field"),
        pytest.param("bogus.section=1", "bogus: unknown field", id="unknown-section"),
        pytest.param("learner.batch_size=abc", "learner.batch_size: Input should be a valid integer", id="wrong-type"),
        pytest.param("learner.batch_size=0", "learner.batch_size: Input should be greater than or equal to 1", id="out-of-range"),
        pytest.param("learner.zero_stage=4", "learner.zero_stage", id="unsupported-literal"),
        pytest.param("replay.mixture={pretrain: 1, nope: 1}", "unknown table(s) ['nope']", id="unknown-table"),
        pytest.param("replay.mixture={pretrain: 0}", "at least one weight must be > 0", id="all-zero-mixture"),
        pytest.param("replay.tables={rollouts: {capacity: 0}}",
                     "replay.tables: rollouts: capacity must be None or an int >= 1, got 0", id="table-capacity"),
        pytest.param("replay.tables={rollouts: {capacty: 5}}", "rollouts: unknown table config keys ['capacty']",
                     id="table-typo"),
        pytest.param("replay.tables={nope: {}}", "replay.tables: unknown table 'nope'", id="table-unknown"),
        pytest.param("model.preset=n9", "model.preset: unknown model preset 'n9'", id="model-preset"),
        pytest.param("learner.publish_every=1000", "learner.publish_every (1000) must be <= learner.steps_per_round", id="cross-field"),
        pytest.param("actors.robot=bridge", "actors.robot=bridge needs a gated actors.dagger.mode", id="bridge-mode"),
        pytest.param("actors.bridge_targets=[a:1]", "lists 1 bridge(s) for 2 actor(s)", id="bridge-targets"),
        pytest.param("actors.state_includes_object_pose=true", "applies to env gr1_pick_place, not 'reach'",
                     id="object-pose-env"),
        pytest.param("learner.ray_resources={fleetloop_learner: 0}", "learner.ray_resources: amounts must be finite "
                     "and > 0, got {'fleetloop_learner': 0.0}", id="ray-resources"),
        pytest.param("metrics.actor_port_stride=0", "metrics.actor_port_stride=0 gives all 2 actors port 9410",
                     id="shared-actor-port-on-one-machine"),
    ],
)
def test_bad_values_name_the_field(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config("default", [override])
    assert expected in str(info.value)


LIMITED = "{samples_per_insert: 8, error_buffer: 16}"


@pytest.mark.parametrize(("overrides", "expected"), [
    pytest.param(["run.mode=async", f"replay.tables={{pretrain: {LIMITED}}}"],
                 "replay.tables.pretrain.samples_per_insert: run.mode=async samples 'pretrain'", id="pretrain-limited"),
    pytest.param(["run.mode=async", f"replay.tables={{corrections: {LIMITED}}}", "actors.dagger_episodes_per_round=0"],
                 "actors.dagger_episodes_per_round: run.mode=async with a rate limiter on 'corrections'",
                 id="no-rollouts"),
    pytest.param(["run.target_success=0.8", "evaluator.enabled=false"], "run.target_success needs evaluator.enabled",
                 id="target-without-evaluator"),
    pytest.param(["weights.promotion=evaluated", "evaluator.enabled=false"],
                 "weights.promotion=evaluated needs evaluator.enabled", id="promotion-without-evaluator"),
    pytest.param(["weights.promotion=always"], "weights.promotion", id="unknown-promotion"),
    pytest.param(["run.mode=rounds"], "run.mode", id="unknown-mode"),
    pytest.param(["actors.weights_refresh=step"], "actors.weights_refresh", id="unknown-refresh"),
])
def test_a_loop_that_could_never_run_is_refused(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config("default", overrides)
    assert expected in str(info.value)


def test_async_limits_the_fleet_fills_are_accepted_and_bound_the_schedule():
    cfg = load_config("default", ["run.mode=async", f"replay.tables={{corrections: {LIMITED}}}",
                                  "run.max_learner_steps=3000"])
    assert cfg.total_learner_steps == 3000, "the LR schedule spans the steps the run may take"
    assert load_config("default").total_learner_steps == 4 * 250


def test_dagger_seeds_must_not_overlap_evaluation_seeds():
    with pytest.raises(ConfigError, match=r"DAgger seeds \[105, 111\) overlap the evaluation seeds \[100, 110\)"):
        load_config("default", ["actors.eval_seed_base=100", "actors.dagger_seed_base=105"])
    load_config("default", ["actors.eval_seed_base=100", "actors.dagger_seed_base=110"])


def test_cluster_settings(tmp_path):
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret\n")
    cfg = load_config("default", ["run.ray_address=auto", "metrics.actor_port_stride=0", f"replay.password_file={secret}",
                                  "learner.num_gpus=1", "actors.ray_resources={fleetloop_actor: 1}"])
    assert cfg.replay.password() == "s3cret"  # one actor per pod may share the port off one machine
    assert (cfg.learner.num_gpus, cfg.actors.ray_resources) == (1.0, {"fleetloop_actor": 1.0})
    assert load_config().replay.password() is None
    missing = load_config("default", ["replay.password_file=/no/such/secret"])  # read on use: bridges lack it
    with pytest.raises(ConfigError, match="replay.password_file: cannot read /no/such/secret"):
        missing.replay.password()


def _over_limit(limit: int) -> str:
    return f"{limit + 1} bytes exceed the limit of {limit} bytes for this file"


def test_config_file_over_the_limit_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("learner:\n  lr: 0.001\n".ljust(MAX_CONFIG_BYTES, "#"))
    assert load_config(str(path)).learner.lr == pytest.approx(0.001)
    path.write_text("learner:\n  lr: 0.001\n".ljust(MAX_CONFIG_BYTES + 1, "#"))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {_over_limit(MAX_CONFIG_BYTES)}")):
        load_config(str(path))


@pytest.mark.parametrize("section", ["weights", "bridge"])
def test_token_file_over_the_limit_or_empty_is_refused(tmp_path, section):
    token = tmp_path / "token"
    token.write_text("s3cret".ljust(MAX_SECRET_BYTES, " "))
    cfg = getattr(load_config("default", [f"{section}.token_file={token}"]), section)
    assert cfg.credentials() == (None, "s3cret")
    token.write_text("s3cret".ljust(MAX_SECRET_BYTES + 1, " "))
    with pytest.raises(ConfigError, match=re.escape(f"{section}.token_file: cannot read {token}: "
                                                    f"{_over_limit(MAX_SECRET_BYTES)}")):
        cfg.credentials()
    token.write_text(" \n")
    with pytest.raises(ConfigError, match=re.escape(f"{section}.token_file: {token} is empty")):
        cfg.credentials()


def test_password_file_over_the_limit_empty_or_binary_is_refused(tmp_path):
    secret = tmp_path / "password"
    cfg = load_config("default", [f"replay.password_file={secret}"])
    for data, problem in [(b"p" * (MAX_SECRET_BYTES + 1), f"cannot read {secret}: {_over_limit(MAX_SECRET_BYTES)}"),
                          (b"\n", f"{secret} is empty"), (b"\xff", f"{secret} is not UTF-8 text")]:
        secret.write_bytes(data)
        with pytest.raises(ConfigError, match=re.escape(f"replay.password_file: {problem}")):
            cfg.replay.password()


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_config("default", ["learner.lr=-1", "actors.num_actors=0"])
    assert "learner.lr" in str(info.value) and "actors.num_actors" in str(info.value)


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_config("no-such-preset")


def test_invalid_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learner: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))


def test_malformed_override():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_override({}, "no-equals-sign")
    with pytest.raises(ConfigError, match="learner is not a section"):
        apply_override({"learner": 3}, "learner.lr=1")


def test_config_files_layer_in_order(tmp_path):
    base, layer = tmp_path / "base.yaml", tmp_path / "layer.yaml"
    base.write_text("learner: {lr: 0.001, batch_size: 8}\nreplay: {mixture: {pretrain: 0.5, corrections: 0.5}}\n"
                    "actors: {dagger: {mode: hg-dagger, takeover: {max_steps: 32}, gate: {kind: joint}}}\n")
    layer.write_text("learner: {batch_size: 16}\nreplay: {mixture: {pretrain: 1.0}}\n"
                     "actors: {dagger: {takeover: {hand_back: [subgoal]}, gate: {effector_m: 0.05}}}\n")
    cfg = load_config([str(base), str(layer)], ["learner.lr=0.002"])
    assert (cfg.learner.lr, cfg.learner.batch_size) == (0.002, 16)  # sections merge field by field
    assert cfg.replay.mixture == {"pretrain": 1.0}  # a mapping field is replaced whole, as --set does
    dagger = cfg.actors.dagger
    assert (dagger.mode, dagger.takeover.max_steps, dagger.takeover.hand_back) == ("hg-dagger", 32, ["subgoal"])
    assert (dagger.gate.kind, dagger.gate.effector_m) == ("task_space", 0.05), "a gate is replaced whole"
