"""The run directory layout, its logs, and the learning-curve plot."""

import logging

from PIL import Image

from fleetloop.plots import plot_evaluations, plot_learning_curves
from fleetloop.rundir import RunDir, log_to_file


def test_run_directory_layout(tmp_path):
    run = RunDir.create(tmp_path / "run")
    for folder in (run.logs, run.checkpoints, run.plots, run.replay):
        assert folder.is_dir()
    path = run.write_config({"run": {"seed": 3}})
    assert path.read_text() == "run:\n  seed: 3\n"


def test_logs_go_to_the_run_directory_once(tmp_path):
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        log_to_file(tmp_path, "role")
        log_to_file(tmp_path, "role")
        logging.getLogger("fleetloop.test").info("hello from the test")
        for handler in root.handlers:
            handler.flush()
        assert (tmp_path / "role.log").read_text().count("hello from the test") == 1
    finally:
        for handler in set(root.handlers) - set(handlers):
            root.removeHandler(handler)
            handler.close()


def test_learning_curves_png(tmp_path):
    rounds = [{"round": 0, "loss": 1.2, "success_rate": 0.1}, {"round": 1, "loss": 0.6, "success_rate": 0.4}]
    path = plot_learning_curves(rounds, tmp_path / "curves.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 400
    assert plot_learning_curves([], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_evaluations_png_adds_wall_clock_when_the_loop_timed_them(tmp_path):
    record = {"policy": "version 1", "step": 50, "episodes": 20, "success_rate": 0.4, "ci95": [0.22, 0.61]}
    untimed = plot_evaluations([record], tmp_path / "untimed.png")
    timed = plot_evaluations([{**record, "version": 1, "minute": 0.8},
                              {**record, "version": 3, "step": 150, "minute": 2.5, "success_rate": 0.6}],
                             tmp_path / "timed.png")
    with Image.open(untimed) as one, Image.open(timed) as two:
        assert two.width > one.width * 1.4, "a second panel: success against the loop's minutes"
