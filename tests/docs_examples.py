"""The shell examples of README.md and docs/*.md, read out of the Markdown so tests can run them as written.

An example is one command line of a fenced block: in a block that shows prompts (`$ curl ...`), each
prompt line is a command and the lines up to the next prompt are the output it shows; in an `sh`
block without prompts, every line is a command (its trailing `# comment` dropped). Plain-text blocks
(folder trees, log excerpts) hold no commands.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

DOCUMENTS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
SHELL_BLOCKS = {"sh", "shell", "bash", "console"}
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE)
DOCUMENTED_URL = "localhost:8000"


@dataclass(frozen=True)
class Example:
    where: str  # "docs/api.md:55"
    command: str  # as written, without the prompt
    shown: str  # the output the document shows after it ("" when none)

    def for_port(self, port: int) -> str:
        """The command with the documented `localhost:8000` pointed at `port`: the only change made."""
        return self.command.replace(DOCUMENTED_URL, f"localhost:{port}")


def _strip_comment(line: str) -> str:
    """Drop a trailing `# comment` outside quotes (shell style)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def examples(path: Path) -> list[Example]:
    """Every command line of `path`'s fenced blocks, with the output the document shows for it."""
    text = path.read_text(encoding="utf-8")
    found: list[Example] = []
    for block in FENCE.finditer(text):
        first_line = text.count("\n", 0, block.start("body")) + 1
        lines = block.group("body").splitlines()
        prompted = any(line.startswith("$ ") for line in lines)
        if not prompted and block.group("lang") not in SHELL_BLOCKS:
            continue
        index = 0
        while index < len(lines):
            line, line_number = lines[index], first_line + index
            index += 1
            if prompted and not line.startswith("$ "):
                continue
            command = _strip_comment(line[2:] if prompted else line)
            if not command:
                continue
            shown: list[str] = []
            while prompted and index < len(lines) and not lines[index].startswith("$ "):
                shown.append(lines[index])
                index += 1
            found.append(Example(f"{path.relative_to(REPO)}:{line_number}", command, "\n".join(shown).strip()))
    return found


def all_examples() -> list[Example]:
    return [example for path in DOCUMENTS for example in examples(path)]


DOCUMENTED_GRPC = "localhost:8500"


def client_snippets() -> list[Example]:
    """Python blocks that talk to a server (they name `localhost:`): the whole block is the command."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for block in FENCE.finditer(text):
            if block.group("lang") in {"python", "py"} and "localhost:" in block.group("body"):
                line = text.count("\n", 0, block.start("body")) + 1
                found.append(Example(f"{path.relative_to(REPO)}:{line}", block.group("body"), ""))
    return found


def printed_expectations(code: str) -> list[str | None]:
    """For each `print(...)` line of a snippet, the output its `# comment` shows (before a comma), or None."""
    expected = []
    for line in code.splitlines():
        if line.lstrip().startswith("print("):
            comment = line.partition("  # ")[2].strip()
            expected.append(comment.split(",")[0].strip() or None)
    return expected


def same_shape(shown: object, actual: object, at: str = "$") -> list[str]:
    """Where `actual` differs from the JSON a document shows: keys, list lengths, strings, ints, types.

    Floats are illustrative in the documents (scores), so only their type is compared; everything
    else (model names, versions, class ids, labels, states) must be exactly what the document shows.
    """
    if isinstance(shown, dict):
        if not isinstance(actual, dict):
            return [f"{at}: shown an object, got {type(actual).__name__}"]
        if set(shown) != set(actual):
            return [f"{at}: shown keys {sorted(shown)}, got {sorted(actual)}"]
        return [problem for key in shown for problem in same_shape(shown[key], actual[key], f"{at}.{key}")]
    if isinstance(shown, list):
        if not isinstance(actual, list) or len(shown) != len(actual):
            return [f"{at}: shown a list of {len(shown)}, got {actual!r:.200}"]
        return [problem for i, (s, a) in enumerate(zip(shown, actual)) for problem in same_shape(s, a, f"{at}[{i}]")]
    if isinstance(shown, float):
        return (
            []
            if isinstance(actual, (int, float)) and not isinstance(actual, bool)
            else [f"{at}: shown a number, got {actual!r}"]
        )
    return [] if shown == actual and type(shown) is type(actual) else [f"{at}: shown {shown!r}, got {actual!r}"]


def shown_json(example: Example) -> object:
    """The JSON the document shows after the command (lines joined), or raise ValueError."""
    return json.loads(" ".join(line.strip() for line in example.shown.splitlines()))
