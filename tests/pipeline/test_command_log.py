"""The command log: our lines on the terminal, every library's in the file."""

import logging

from pipeline.command_log import command_log, current


def test_library_lines_go_to_the_file_and_ours_to_both(tmp_path, capsys):
    import ray  # noqa: F401 (Ray gives its logger a terminal handler of its own)

    ray_logger = logging.getLogger("ray")
    assert not ray_logger.propagate and ray_logger.handlers
    ray_handlers = ray_logger.handlers[:]
    with command_log("score", verbose=False, directory=tmp_path) as log:
        assert current() is log
        logging.getLogger("pipeline.scoring").info("scored 10 images")
        logging.getLogger("pipeline.scoring").warning("2 shards were empty")
        logging.getLogger("pyiceberg.io").info("opened a table")
        ray_logger.info("Started a local Ray instance.")
        with command_log("filter", verbose=False, directory=tmp_path) as inner:
            assert inner is log  # a command run by another shares its log
    assert current() is None
    terminal = capsys.readouterr().err.splitlines()
    assert terminal == ["scored 10 images", "warning: 2 shards were empty"]
    held = log.path.read_text()
    for line in ("scored 10 images", "opened a table", "Started a local Ray instance."):
        assert line in held
    assert log.path.name.startswith("score-") and len(list(tmp_path.iterdir())) == 1
    assert ray_logger.handlers == ray_handlers  # Ray's own handlers are back once it ends


def test_verbose_shows_libraries_by_name_and_a_quiet_command_leaves_no_file(tmp_path, capsys):
    with command_log("query", verbose=True, directory=tmp_path) as log:
        logging.getLogger("pyiceberg.io").info("opened a table")
    assert "pyiceberg.io: opened a table" in capsys.readouterr().err
    assert "opened a table" in log.path.read_text()
    with command_log("query", verbose=False, directory=tmp_path / "quiet") as log:
        pass
    assert not log.path.exists()


def test_a_log_moves_with_what_it_holds(tmp_path):
    with command_log("demo", verbose=False, directory=tmp_path / "home") as log:
        logging.getLogger("ray").info("before the move")
        log.move_to(tmp_path / "demo-output" / "logs")
        logging.getLogger("ray").info("after the move")
    assert log.path.parent == tmp_path / "demo-output" / "logs"
    held = log.path.read_text()
    assert "before the move" in held and "after the move" in held
    assert not list((tmp_path / "home").iterdir())
