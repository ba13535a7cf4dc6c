"""`infernetes --help` helps: every command and option says what it does, in plain text."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infernetes.operator.cli import build_parser, cmd_models_import


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                      argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, (*path, name))


COMMANDS = list(walk(build_parser()))


def test_the_walk_covers_every_command():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"serve", "operator", "crd", "api-keys", "api-keys create", "models", "models import", "models pull",
            "models optimize", "worker"} <= names


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p) or "infernetes" for p, _ in COMMANDS])
def test_every_command_and_option_has_plain_help(path, parser):
    where = "infernetes " + " ".join(path)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for sub in action._choices_actions:
                assert sub.help, f"{where}: command [{sub.dest}] has no help text"
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{where}: [{name}] has no help text"
    text = parser.format_help()
    assert "`" not in text, f"{where} --help shows reST backticks:\n{text}"
    if path:
        assert parser.description, f"{where} --help has no description"


def test_top_level_help_lists_every_command():
    out = subprocess.run([str(Path(sys.executable).parent / "infernetes"), "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("serve", "operator", "crd", "api-keys", "models", "worker"):
        assert f"\n    {command} " in out, out
    assert "`" not in out


def test_import_of_an_existing_id_names_replace(tmp_path, tiny_model_dir, capsys):
    args = build_parser().parse_args(["models", "import", str(tiny_model_dir), "--model-id", "tiny",
                                      "--data-dir", str(tmp_path)])
    assert cmd_models_import(args) == 0
    capsys.readouterr()
    assert cmd_models_import(args) == 1
    err = capsys.readouterr().err
    assert "already in the store" in err and "--replace" in err, err
    args.replace = True
    assert cmd_models_import(args) == 0
