"""The README's examples run as written against `python app.py --demo`.

Every `python` and `bash` code block of README.md runs, in order, against the demo app started
once for this module, with only the README's URL replaced by the app's. A block is not run
when the HTML comment right before it says `readme-test: skip, <why>`; a
`readme-test: writes <file> <width>x<height>` comment names an image the block must write.
Blocks run from a scratch folder holding presets/examples/, as from the repository's root.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, start_app, stop

README = REPO / "README.md"
README_URL = "http://127.0.0.1:7860"
RUNNERS = {"python": [sys.executable, "-c"], "bash": ["bash", "-e", "-o", "pipefail", "-c"]}
# A fenced block (possibly indented, in a list) whose info string starts with its language.
FENCE = re.compile(r"^(?P<indent> *)```(?P<language>\w+)[^\n]*\n(?P<body>.*?)^(?P=indent)``` *$",
                   re.MULTILINE | re.DOTALL)
DIRECTIVE = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<text>.*?)\s*-->\s*$")
SKIP = re.compile(r"^skip, (?P<why>\S.*)$")
WRITES = re.compile(r"^writes (?P<file>\S+) (?P<width>\d+)x(?P<height>\d+)$")


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    code: str
    directives: tuple[str, ...]

    @property
    def skip_reason(self) -> str | None:
        return next((match["why"] for text in self.directives if (match := SKIP.match(text))), None)

    @property
    def writes(self) -> list[tuple[str, tuple[int, int]]]:
        return [(match["file"], (int(match["width"]), int(match["height"])))
                for text in self.directives if (match := WRITES.match(text))]


def readme_blocks() -> list[Block]:
    """The README's python and bash blocks, each with the readme-test comments right above it."""
    text = README.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        if match["language"] not in RUNNERS:
            continue
        above = text[:match.start()].splitlines()
        directives = []
        while above and (directive := DIRECTIVE.match(above[-1])):
            directives.insert(0, directive["text"])
            above.pop()
        blocks.append(Block(len(above) + len(directives) + 1, match["language"],
                            textwrap.dedent(match["body"]), tuple(directives)))
    return blocks


BLOCKS = readme_blocks()
EXAMPLES = [block for block in BLOCKS if block.skip_reason is None]


@pytest.fixture(scope="module")
def readme_app(family, family_root, tmp_path_factory):
    """`python app.py --demo` in its own process; its URL without the trailing slash."""
    process, url = start_app(["--demo"], family_root, tmp_path_factory.mktemp("readme-app"))
    yield url.rstrip("/")
    stop(process)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """Where the examples run: a folder with the repository's presets/examples/."""
    folder = tmp_path_factory.mktemp("readme-examples")
    shutil.copytree(REPO / "presets" / "examples", folder / "presets" / "examples")
    return folder


def test_every_code_block_is_an_example_or_says_why_not():
    for block in BLOCKS:
        for text in block.directives:
            assert SKIP.match(text) or WRITES.match(text), f"README.md:{block.line}: unknown comment {text!r}"
        if block.skip_reason is None:
            assert README_URL in block.code, f"README.md:{block.line}: an example that does not call the app"
    run = "\n".join(block.code for block in EXAMPLES)
    assert "from gradio_client import" in run and "from openai import" in run and "curl " in run
    assert all(block.writes for block in EXAMPLES if block.language == "python")


@pytest.mark.parametrize("block", EXAMPLES, ids=[f"README.md:{block.line}-{block.language}" for block in EXAMPLES])
def test_readme_example_runs_against_the_demo_app(block, readme_app, scratch):
    from PIL import Image

    for name, _ in block.writes:
        (scratch / name).unlink(missing_ok=True)
    code = block.code.replace(README_URL, readme_app)
    done = subprocess.run([*RUNNERS[block.language], code], cwd=scratch, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"README.md:{block.line} failed:\n{done.stdout}\n{done.stderr}"
    for name, size in block.writes:
        with Image.open(scratch / name) as image:
            assert image.size == size, f"README.md:{block.line}: {name} is {image.size}, not {size}"
