"""The docs against the code: README.md and docs/*.md link only to what exists, name only options that the commands'
real ``--help`` lists, and docs/cli.md names every option of ``fer-batch label``, ``summarize`` and ``report``.

Options are read from the docs where a command names them: a line of a code block or an inline code span that holds
``fer-batch SUB``, ``fer-train SUB``, ``benchmarks/NAME.py`` or ``python -m training.NAME`` (the options after
it on that line), a table row whose first cell holds such a command, or a heading that names one (the options in
code spans below it). Any other ``--option`` must belong to some ``fer-batch`` or ``fer-train`` command. HTML
comments are skipped: that is where a doc keeps a line for an option that does not exist yet.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FER_BATCH_COMMANDS = ("label", "summarize", "report", "review")

OPTION = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")
CODE_SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# A command the docs may name, and where its --help comes from.
COMMAND = re.compile(
    r"(?:\bpython3?\s+-m\s+fer_batch|(?<![\w/.-])fer-batch)\s+(?P<batch>[A-Za-z][\w-]*)"
    r"|(?:\bpython3?\s+-m\s+training|(?<![\w/.-])fer-train)\s+(?P<train>[A-Za-z][\w-]*)"
    r"|(?<![\w/.-])(?P<script>benchmarks/\w+\.py)"
    r"|\bpython3?\s+-m\s+(?P<module>training\.\w+)"
)


# --- what the commands accept -----------------------------------------------------------------------------------

def _options_of(help_text: str) -> frozenset[str]:
    """The long options a --help lists: those in the invocation column of its option lines."""
    options = set()
    for line in help_text.splitlines():
        if line.startswith("  -"):
            invocation = re.split(r"\s{2,}", line.strip())[0]
            options.update(OPTION.findall(invocation))
    return frozenset(options)


def _help_in_process(main, argv: list[str]) -> str | None:
    """What ``main(argv + ['--help'])`` prints, or None when it does not print help (an unknown command)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([*argv, "--help"])
        except SystemExit as stop:
            if stop.code not in (0, None):
                return None
    return out.getvalue() or None


@cache
def fer_batch_help(command: str) -> str | None:
    from fer_batch.cli import main

    return _help_in_process(main, [command])


@cache
def fer_train_help(command: str) -> str | None:
    from training.cli import main

    return _help_in_process(main, [command])


@cache
def fer_train_commands() -> tuple[str, ...]:
    from training.cli import main

    usage = _help_in_process(main, []) or ""
    found = re.search(r"\{([\w,-]+)\}", usage)
    assert found, f"fer-train --help lists no commands:\n{usage}"
    return tuple(found.group(1).split(","))


@cache
def script_help(path: str) -> str | None:
    """``python PATH --help`` for a script that parses arguments with argparse; None for one that does not (running
    it would run it: benchmarks/train_speed.py measures at once)."""
    source = REPO / path
    if not source.is_file() or "ArgumentParser" not in source.read_text():
        return None
    module = path.removesuffix(".py").replace("/", ".")
    argv = ["-m", module] if path.startswith("training/") else [path]
    result = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"python {' '.join(argv)} --help failed:\n{result.stderr[-2000:]}"
    return result.stdout


@cache
def every_cli_option() -> frozenset[str]:
    """Every option of every fer-batch and fer-train command: what an option named without its command may be."""
    helps = [fer_batch_help(c) for c in FER_BATCH_COMMANDS] + [fer_train_help(c) for c in fer_train_commands()]
    return frozenset().union(*(_options_of(text) for text in helps if text))


@dataclass(frozen=True)
class Command:
    program: str  # "fer-batch", "fer-train", "script"
    name: str | None  # subcommand or script path; None: any of the program's commands (a placeholder like COMMAND)

    def __str__(self) -> str:
        if self.program == "script":
            return f"python {self.name}"
        return f"{self.program} {self.name or 'COMMAND'}"


def parse_command(match: re.Match) -> Command:
    if match.group("batch"):
        name = match.group("batch")
        return Command("fer-batch", name if name.islower() else None)
    if match.group("train"):
        name = match.group("train")
        return Command("fer-train", name if name.islower() else None)
    if match.group("script"):
        return Command("script", match.group("script"))
    return Command("script", match.group("module").replace(".", "/") + ".py")


def accepted(command: Command | None) -> frozenset[str] | None:
    """The options ``command`` accepts (None: no such command; without a command, every CLI option)."""
    if command is None:
        return every_cli_option()
    if command.program == "script":
        text = script_help(command.name)
        if text is None:
            return None if not (REPO / command.name).is_file() else frozenset({"--help"})
        return _options_of(text)
    if command.name is None:
        names = FER_BATCH_COMMANDS if command.program == "fer-batch" else fer_train_commands()
        helps = [fer_batch_help(n) if command.program == "fer-batch" else fer_train_help(n) for n in names]
        return frozenset().union(*(_options_of(text) for text in helps if text))
    text = fer_batch_help(command.name) if command.program == "fer-batch" else fer_train_help(command.name)
    return _options_of(text) if text else None


# --- what the docs say ------------------------------------------------------------------------------------------

@dataclass
class Mention:
    path: Path
    line: int
    option: str
    command: Command | None  # None: named without a command


@dataclass
class Doc:
    path: Path
    text: str  # HTML comments blanked out, line numbers kept
    mentions: list[Mention] = field(default_factory=list)
    commands: list[tuple[int, Command]] = field(default_factory=list)
    links: list[tuple[int, str]] = field(default_factory=list)
    anchors: set[str] = field(default_factory=set)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _without_comments(text: str) -> str:
    return HTML_COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _commands_in(text: str) -> list[tuple[Command, str]]:
    """Each command named in ``text`` (one line of a shell session or one code span) with what follows it, up to
    the next command or shell separator."""
    found = []
    for segment in re.split(r"&&|;|\s\|\s|\s#\s", text):
        matches = list(COMMAND.finditer(segment))
        for index, match in enumerate(matches):
            end = matches[index + 1].start() if index + 1 < len(matches) else len(segment)
            found.append((parse_command(match), segment[match.end():end]))
    return found


def _read_spans(doc: Doc, line: int, text: str, context: Command | None) -> None:
    for span in CODE_SPAN.findall(text):
        commands = _commands_in(span)
        if commands:
            for command, rest in commands:
                doc.commands.append((line, command))
                doc.mentions += [Mention(doc.path, line, option, command) for option in OPTION.findall(rest)]
        elif span.lstrip().startswith("-"):  # an option on its own: the row's or the section's command
            doc.mentions += [Mention(doc.path, line, option, context) for option in OPTION.findall(span)]
    for option in OPTION.findall(CODE_SPAN.sub(" ", text)):  # outside code: any command's
        doc.mentions.append(Mention(doc.path, line, option, None))


def read_doc(path: Path) -> Doc:
    doc = Doc(path, _without_comments(path.read_text(encoding="utf-8")))
    lines = doc.text.splitlines()
    context: Command | None = None
    in_fence, fence, paragraph, paragraph_start = False, "", [], 0
    seen_slugs: dict[str, int] = {}

    def flush() -> None:
        if paragraph:
            text = " ".join(paragraph)
            _read_spans(doc, paragraph_start, text, context)
            doc.links += [(paragraph_start, target) for target in LINK.findall(CODE_SPAN.sub(" ", text))]
            paragraph.clear()

    shell_line = ""
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if in_fence:
            if stripped.startswith(fence):
                in_fence = False
                continue
            shell_line += line.rstrip().removesuffix("\\") + " "
            if line.rstrip().endswith("\\"):
                continue
            for command, rest in _commands_in(shell_line):
                doc.commands.append((number, command))
                doc.mentions += [Mention(path, number, option, command) for option in OPTION.findall(rest)]
            shell_line = ""
            continue
        if stripped.startswith(("```", "~~~")):
            flush()
            in_fence, fence, shell_line = True, stripped[:3], ""
            continue
        heading = re.match(r"#{1,6}\s+(.*)", stripped)
        if heading:
            flush()
            anchor = slug(heading.group(1))
            count = seen_slugs.get(anchor, 0)
            seen_slugs[anchor] = count + 1
            doc.anchors.add(anchor if count == 0 else f"{anchor}-{count}")
            commands = _commands_in(heading.group(1))
            context = commands[0][0] if commands else None
            continue
        if stripped.startswith("|"):
            flush()
            cells = re.split(r"(?<!\\)\|", stripped.strip("|"))
            row_commands = _commands_in(" ".join(CODE_SPAN.findall(cells[0]))) if cells else []
            _read_spans(doc, number, stripped, row_commands[0][0] if row_commands else context)
            doc.links += [(number, target) for target in LINK.findall(CODE_SPAN.sub(" ", stripped))]
            continue
        if not stripped:
            flush()
            continue
        if not paragraph:
            paragraph_start = number
        paragraph.append(stripped)
    flush()
    return doc


@cache
def docs() -> dict[Path, Doc]:
    return {path: read_doc(path) for path in DOCS}


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO)}:{line}"


# --- the tests --------------------------------------------------------------------------------------------------

def test_readme_is_a_short_front_page_that_starts_with_the_two_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200, "README.md is over 200 lines: move the depth into docs/"
    first_block = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert first_block, "README.md has no bash block"
    assert first_block.group(1).splitlines() == [
        "pip install . && fer-batch label examples/ -o emotions.csv",
        "pip install '.[train,test,ray]' && python -m pytest",
    ]


def test_every_doc_is_linked_from_the_readme():
    linked = {(REPO / target.split("#")[0]).resolve() for _, target in docs()[REPO / "README.md"].links}
    missing = [str(path.relative_to(REPO)) for path in DOCS[1:] if path.resolve() not in linked]
    assert not missing, f"docs the README does not link to: {missing}"


def test_every_relative_link_resolves():
    broken = []
    for doc in docs().values():
        for line, target in doc.links:
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            file_part, _, anchor = target.partition("#")
            path = (doc.path.parent / file_part).resolve() if file_part else doc.path
            if not path.exists():
                broken.append(f"{_where(doc.path, line)}: {target}: no such file")
            elif anchor and path.suffix == ".md":
                anchors = docs()[path].anchors if path in docs() else read_doc(path).anchors
                if anchor not in anchors:
                    broken.append(f"{_where(doc.path, line)}: {target}: no heading #{anchor} in {path.name}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_command_the_docs_name_exists():
    unknown = []
    for doc in docs().values():
        for line, command in doc.commands:
            if accepted(command) is None:
                unknown.append(f"{_where(doc.path, line)}: {command}: no such command")
    assert not unknown, "\n".join(unknown)


def test_every_option_the_docs_name_is_in_its_commands_help():
    wrong = []
    for doc in docs().values():
        for mention in doc.mentions:
            options = accepted(mention.command)
            if options is not None and mention.option not in options:
                whose = str(mention.command) if mention.command else "any fer-batch or fer-train command"
                wrong.append(f"{_where(mention.path, mention.line)}: {mention.option} is not an option of {whose}")
    assert not wrong, "options the docs name that --help does not list:\n" + "\n".join(sorted(set(wrong)))


@pytest.mark.parametrize("command", FER_BATCH_COMMANDS)
def test_cli_reference_names_every_option(command):
    help_text = fer_batch_help(command)
    assert help_text, f"fer-batch {command} --help printed nothing"
    named = {m.option for m in docs()[REPO / "docs" / "cli.md"].mentions
             if m.command == Command("fer-batch", command)}
    missing = sorted(_options_of(help_text) - named - {"--help"})
    assert not missing, f"docs/cli.md, section fer-batch {command}, does not describe {missing}"


def test_the_readme_python_example_runs():
    """The README's 'model in your own code' example, as a user pastes it, from the repository root."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks, "README.md has no python example"
    for code in blocks:
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"README example failed:\n{code}\n{result.stderr[-2000:]}"
