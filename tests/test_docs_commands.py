"""Every `medadapt ...` command shown in README.md and docs/*.md names a command and options that exist.

Commands are taken from fenced code blocks (continuation lines joined, trailing comments dropped) and
from inline code spans that start with `medadapt `; each is checked against the typer/click app
itself (commands, option names, required options), without running anything.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from medadapt.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(medadapt [^`]+)`")


def fenced_commands(text: str) -> list[str]:
    out = []
    for block in FENCE.findall(text):
        lines, current = [], ""
        for raw in block.splitlines():
            line = raw.strip()
            if current:
                current += " " + line
            elif line.startswith(("medadapt ", "$ medadapt ")) or line == "medadapt":
                current = line.removeprefix("$ ")
            else:
                continue
            if current.endswith("\\"):
                current = current[:-1].rstrip()
                continue
            lines.append(current)
            current = ""
        out += lines
    return out


def commands_in(path: Path) -> list[str]:
    text = path.read_text()
    inline = [m.replace("\\|", "|") for m in INLINE.findall(FENCE.sub("", text))]
    return fenced_commands(text) + inline


def tokens(command: str) -> list[str]:
    command = re.sub(r"\s#\s.*$", "", command)  # a trailing comment
    try:
        parts = shlex.split(command)
    except ValueError:
        parts = command.split()
    return [p.strip("[]") for p in parts]


ALL = [(path, cmd) for path in DOCS for cmd in commands_in(path)]


def test_the_docs_show_commands():
    assert len([c for p, c in ALL if p.name == "README.md"]) >= 10
    assert any("\\" in p.read_text() and len(tokens(c)) > 12 for p, c in ALL)  # continuation lines joined


@pytest.mark.parametrize("path,command", ALL, ids=[f"{p.name}:{c[:60]}" for p, c in ALL])
def test_command_and_flags_exist(path, command):
    root = typer.main.get_command(app)
    words = tokens(command)
    assert words[0] == "medadapt"
    if len(words) == 1 or words[1] in ("--help", "--version"):
        return
    name = words[1]
    assert name in root.commands, f"{path.name}: `medadapt {name}` is not a command ({command})"
    sub = root.commands[name]
    options = {o for p in sub.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}
    options.add("--help")
    for word in words[2:]:
        if word.startswith("-") and word not in ("-", "--") and not re.fullmatch(r"-?\d[\d.e-]*", word):
            flag = word.split("=", 1)[0]
            assert flag in options, f"{path.name}: `medadapt {name}` has no option {flag} ({command})"
    if "..." in words or "--help" in words or len(words) < 5:
        return  # an abbreviated command, or prose naming a command and an option
    for p in sub.params:
        if p.param_type_name == "option" and p.required:
            assert set(p.opts) & set(words), f"{path.name}: `medadapt {name}` needs {p.opts[0]} ({command})"
