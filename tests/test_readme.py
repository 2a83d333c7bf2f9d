"""The README's examples run as written on a fresh checkout: no server, no model, just the text and the repository.

A newcomer copies the README's commands one by one after `make serve`. They used to fail: the examples named
files nobody has (`meeting.wav`) and called `stt-engine`, which is in `.venv/bin`, not on `PATH`. These checks
keep that from coming back: every file an example names exists, every command is one the repository provides
(a `make` target, an `stt-engine` subcommand, a `.venv/bin` program) or a common system tool, every URL path is a
route the server declares, every Python example compiles, and every relative link in the README and docs/ leads to
a file and heading that exist.
"""

from __future__ import annotations

import re
import shlex
import tomllib
import unicodedata
from pathlib import Path

import pytest

from tests.support import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))

# System tools the examples may use as they are (the README says where each comes from).
SYSTEM_TOOLS = {"curl", "docker", "docker-compose", "podman", "cp", "mkdir", "chown", "sudo", "source", ".", "cd", "ls", "cat",
                "arecord", "ffmpeg", "openssl"}
# Pages written on other branches at the same time as this test; once merged they are checked like every other
# link (this set only excuses their absence).
WRITTEN_ELSEWHERE = {"limits.md", "jobs-recovery.md", "operations-limits.md", "performance-latency.md",
                     "diarization.md", "diarization-api.md"}
_AUDIO = re.compile(r"[\w./-]+\.(?:wav|flac|mp3|m4a|aac|ogg|opus|webm|mp4)")
_REPO_PATH = re.compile(r"(?:^|[@=])((?:tests|docs|docker|scripts|src|bench|offline)/[\w./-]*\w|\.env\.example)")


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def _shell_commands(block: str) -> list[list[str]]:
    """Each simple command in a shell block, as words: continuation lines joined, comments dropped,
    pipelines and `&&` lists split."""
    commands: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, "|"]:
            if word in {"|", "&&", "||", ";"}:
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(word)
    return commands


def _program(command: list[str]) -> tuple[str, list[str]]:
    """The program a command runs and its arguments, past `VAR=value` prefixes and `sudo`."""
    words = list(command)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words.pop(0)
    if words and words[0] == "sudo":
        words.pop(0)
    return (words[0], words[1:]) if words else ("", [])


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", text, re.M))


def _subcommands() -> set[str]:
    from stt_engine.cli import build_parser

    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return set(action.choices)


def _scripts() -> set[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return set(pyproject["project"]["scripts"])


def _readme_commands() -> list[tuple[str, list[str]]]:
    """(program, arguments) of every command in the README's shell blocks, in order; `stt-engine` after
    `source .venv/bin/activate` is tagged `activated:stt-engine` (it is on PATH only then)."""
    out: list[tuple[str, list[str]]] = []
    activated = False
    for block in _blocks(README.read_text(encoding="utf-8"), "bash"):
        for command in _shell_commands(block):
            program, args = _program(command)
            if program in {"source", "."} and args == [".venv/bin/activate"]:
                activated = True
            if program == "stt-engine" and activated:
                program = "activated:stt-engine"
            out.append((program, args))
    return out


def test_readme_has_runnable_examples() -> None:
    commands = _readme_commands()
    programs = {program for program, _ in commands}
    assert {"make", "curl", ".venv/bin/stt-engine"} <= programs, programs
    assert _blocks(README.read_text(encoding="utf-8"), "python")


def test_every_command_is_one_the_repository_or_the_system_provides() -> None:
    targets, subcommands, scripts = _make_targets(), _subcommands(), _scripts()
    bad = []
    for program, args in _readme_commands():
        if program == "make":
            bad += [f"make {a}: no such target" for a in args if not a.startswith("-") and a not in targets]
        elif program in {".venv/bin/stt-engine", "activated:stt-engine"}:
            if args and not args[0].startswith("-") and args[0] not in subcommands:
                bad.append(f"stt-engine {args[0]}: no such subcommand")
        elif program.startswith(".venv/bin/"):
            name = program.removeprefix(".venv/bin/")
            if name not in scripts | {"python", "pip"}:
                bad.append(f"{program}: not installed into .venv (pyproject [project.scripts])")
        elif program == "stt-engine":
            bad.append("plain `stt-engine` before `source .venv/bin/activate`: it is not on PATH after `make serve`")
        elif program not in SYSTEM_TOOLS:
            bad.append(f"{program}: not a make target, an .venv/bin program or a known system tool")
    assert not bad, bad


def test_every_file_an_example_names_exists() -> None:
    text = README.read_text(encoding="utf-8")
    missing = []
    for block in _blocks(text, "bash"):
        for command in _shell_commands(block):
            for word in command:
                if word.startswith("file=@") and not (REPO / word.removeprefix("file=@")).is_file():
                    missing.append(word)
                missing += [m for m in _REPO_PATH.findall(word) if not (REPO / m).exists()]
                if _AUDIO.fullmatch(word) and not (REPO / word).is_file():
                    missing.append(word)
    for block in _blocks(text, "python"):
        missing += [m for m in re.findall(r"open\(\"([^\"]+)\"", block) if not (REPO / m).is_file()]
    assert not missing, f"the README names files a new user does not have: {missing}"


def test_docs_examples_use_shipped_clips() -> None:
    missing = []
    for page in DOCS:
        for block in _blocks(page.read_text(encoding="utf-8"), r"(?:bash|python)"):
            missing += [f"{page.name}: {m}" for m in re.findall(r"tests/data/[\w./-]*\w", block)
                        if not (REPO / m).exists()]
    assert not missing, missing


def test_every_url_path_is_a_route() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "src" / "stt_engine").rglob("*.py"))
    text = README.read_text(encoding="utf-8")
    paths = set(re.findall(r"http://localhost:8003(/[\w/.-]*)", text))
    unknown = [p for p in paths if p not in {"/", "/v1"} and f'"{p}"' not in source]
    assert not unknown, f"the README calls routes the server does not declare: {unknown}"


def test_python_examples_compile() -> None:
    for page in [README, *DOCS]:
        for i, block in enumerate(_blocks(page.read_text(encoding="utf-8"), "python")):
            compile(block, f"{page.name} python example {i + 1}", "exec")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    kept = "".join(c for c in heading if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_lead_somewhere(page: Path) -> None:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            if dest.name not in WRITTEN_ELSEWHERE:
                broken.append(target)
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_readme_names_every_subcommand() -> None:
    """The README's list of commands is the CLI's: a new subcommand is listed where a newcomer looks."""
    text = README.read_text(encoding="utf-8")
    unnamed = [name for name in _subcommands() if f"`{name}`" not in text]
    assert not unnamed, f"add these stt-engine commands to the README's command list: {unnamed}"
