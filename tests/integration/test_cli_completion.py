"""``cib completion bash|zsh|fish``: each script is printed, bash really completes with it (a
bash process sources the script and calls its function as the shell would on TAB), and the
installed ``cib`` answers the zsh and fish completion protocol."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import run

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join((str(BIN), env.get("PATH", "")))
    env.update(extra)
    return env


@pytest.mark.parametrize(("shell", "marker"), [
    ("bash", "_CIB_COMPLETE=bash_complete"),
    ("zsh", "_CIB_COMPLETE=zsh_complete"),
    ("fish", "_CIB_COMPLETE=fish_complete"),
])
def test_each_script_is_printed(shell, marker):
    result = run("completion", shell)
    assert result.exit_code == 0, result.stderr
    assert marker in result.stdout
    assert "cib" in result.stdout and result.stdout.endswith("\n")


def _bash_complete(*words: str) -> list[str]:
    """What bash offers after ``words`` (the last one being completed) with cib's script."""
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the completion script"
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f'eval "$(cib completion bash)"\n'
               f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMPREPLY=()\n"
               "_cib_completion cib\n"
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    done = subprocess.run([bash, "--norc", "--noprofile", "-c", program], capture_output=True,
                          text=True, env=_env(), timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completes_command_names():
    assert _bash_complete("cib", "co") == ["completion", "config", "copy"]
    assert _bash_complete("cib", "ta") == ["tag"]


def test_bash_completes_subcommands_options_and_choices():
    assert _bash_complete("cib", "index", "") == ["append", "create"]
    assert _bash_complete("cib", "completion", "") == ["bash", "zsh", "fish"]
    assert "--all-tags" in _bash_complete("cib", "copy", "--a")


@pytest.mark.parametrize(("shell", "cword", "expected"), [
    ("zsh", "1", "plain\ntag\n"),
    ("fish", "ta", "plain,tag\t"),
])
def test_cib_answers_the_zsh_and_fish_protocol(shell, cword, expected):
    done = subprocess.run([str(BIN / "cib")], capture_output=True, text=True, timeout=120,
                          env=_env(_CIB_COMPLETE=f"{shell}_complete", COMP_WORDS="cib ta",
                                   COMP_CWORD=cword), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(expected), done.stdout


def test_an_unknown_shell_is_a_usage_error():
    result = run("completion", "tcsh")
    assert result.exit_code == 2
    assert "tcsh" in result.stderr
