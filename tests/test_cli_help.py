# SPDX-License-Identifier: Apache-2.0
"""`--help` of both scripts documents every argument, shows its default and ends with example commands."""

import argparse
import re
import subprocess
import sys

import pytest

from modeling_ijepa.evaluation.arguments import build_parser as build_probe_parser
from modeling_ijepa.training.arguments import build_parser as build_pretraining_parser

from .conftest import REPO_ROOT

PARSERS = {"run_pretraining.py": build_pretraining_parser, "run_linear_probe.py": build_probe_parser}


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions if action.option_strings and action.help is not argparse.SUPPRESS]


def help_blocks(text: str) -> dict[str, str]:
    """The `--help` text of each option, keyed by its first option string (whitespace collapsed)."""
    blocks, current = {}, None
    for line in text.splitlines():
        if match := re.match(r"^  (-[-\w]+)", line):
            current = match.group(1)
            blocks[current] = line
        elif current is not None and line.startswith("   "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return {name: " ".join(block.split()) for name, block in blocks.items()}


@pytest.mark.parametrize("script", PARSERS)
def test_every_option_has_help(script):
    parser = PARSERS[script]()
    undocumented = [action.option_strings[0] for action in options(parser) if not (action.help or "").strip()]
    assert not undocumented, f"{script}: options without help: {undocumented}"


@pytest.mark.parametrize("script", PARSERS)
def test_help_shows_defaults_and_examples(script):
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    blocks = help_blocks(result.stdout)
    with_default = [
        action for action in options(PARSERS[script]())
        if action.default is not None and action.default is not argparse.SUPPRESS
    ]
    assert with_default
    missing = [
        action.option_strings[0] for action in with_default
        if "(default:" not in blocks.get(action.option_strings[0], "")
    ]
    assert not missing, f"{script} --help shows no default for {missing}"
    examples = result.stdout.split("\nexamples:\n", 1)
    assert len(examples) == 2 and examples[1].count(f" {script} ") >= 2, result.stdout[-2000:]
