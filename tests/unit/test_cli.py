import pytest

from kubespeed_cli import main as cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_refused_by_name(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "frobnicate" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_module_has_main(name):
    import importlib

    module = importlib.import_module(cli.COMMANDS[name][0])
    assert callable(module.main)
