"""``leadrouter worker``: the worker groups it starts."""

from worker.entrypoints.service import ALERT_THREADS, worker_commands


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_each_alert_process_is_a_threads_worker_of_its_own_and_they_scale_with_alert_concurrency():
    for n in (1, 2, 3):
        groups = worker_commands(concurrency=4, alert_concurrency=n)
        alerts = [command for name, command in groups if name == "alerts"]
        assert len(alerts) == n
        assert all(_flag(c, "-Q") == "alerts" and _flag(c, "--pool") == "threads"
                   and _flag(c, "-c") == str(ALERT_THREADS) for c in alerts)
        assert len({_flag(c, "-n") for c in alerts}) == n            # distinct node names
        (fast,) = [command for name, command in groups if name == "fast"]
        (events,) = [command for name, command in groups if name == "events"]
        assert _flag(fast, "-c") == str(n) and _flag(events, "-c") == "4"
        assert _flag(fast, "--pool") == _flag(events, "--pool") == "prefork"


def test_the_cli_refuses_fewer_than_one_worker_process(capsys):
    import pytest

    from worker.entrypoints.cli import main

    for flag in ("--concurrency", "--alert-concurrency"):
        for bad in ("0", "-1", "two"):
            with pytest.raises(SystemExit) as exit_:
                main(["worker", flag, bad])
            assert exit_.value.code == 2 and flag in capsys.readouterr().err


def test_no_alert_process_at_all_is_never_asked_for():
    assert len([1 for name, _ in worker_commands(alert_concurrency=0) if name == "alerts"]) == 1
