"""Shell completion for the `gateway` command: the scripts typer generates, printed or installed where each shell
looks for them."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from typer._click.core import Command
from typer._click.shell_completion import get_completion_class
from typer._completion_classes import completion_init

PROG_NAME = "gateway"
# The variable through which the shell's completion function calls `gateway` back (click's naming rule).
COMPLETE_VAR = "_GATEWAY_COMPLETE"
BEGIN = "# >>> gateway completion >>>"
END = "# <<< gateway completion <<<"


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"
    powershell = "powershell"


@dataclass(frozen=True)
class Target:
    """Where one shell's completion goes: the script file, and the lines an rc file needs to load it."""

    script: Path
    rc_file: Path | None
    rc_lines: tuple[str, ...]
    reload: str


def register(app: typer.Typer) -> None:
    """Add `gateway completion`, and teach the command line to answer the completion scripts' call-backs (typer
    registers its shell classes only for apps built with its own `--install-completion` options)."""
    completion_init()
    app.command("completion")(completion)


def completion(
    ctx: typer.Context,
    shell: Annotated[Shell, typer.Argument(help="the shell to complete in")],
    install: Annotated[
        bool, typer.Option("--install", help="write the script where the shell loads it, and say how to reload")
    ] = False,
) -> None:
    """Print the shell completion script, or install it."""
    text = script(ctx.find_root().command, shell)
    if not install:
        typer.echo(text, nl=False)
        return
    target = target_for(shell, Path.home(), os.environ.get("XDG_CONFIG_HOME"))
    for line in write(target, shell, text):
        typer.echo(line)


def script(cli: Command, shell: Shell) -> str:
    """The completion script of `shell` for `cli`, from typer's own completion classes."""
    completer = get_completion_class(shell.value)
    if completer is None:  # register() has not run
        raise RuntimeError(f"no completion class for {shell}")
    return completer(cli, {}, PROG_NAME, COMPLETE_VAR).source().strip() + "\n"


def target_for(shell: Shell, home: Path, xdg_config_home: str | None = None) -> Target:
    """The usual place of each shell's completion, under `home`."""
    config = Path(xdg_config_home) if xdg_config_home else home / ".config"
    if shell is Shell.bash:
        path = home / ".bash_completion.d" / PROG_NAME
        return Target(
            path,
            home / ".bashrc",
            (f'[ -r "{_home_relative(path, home)}" ] && . "{_home_relative(path, home)}"',),
            "source ~/.bashrc (or open a new terminal)",
        )
    if shell is Shell.zsh:
        directory = home / ".zsh" / "completion"
        # fpath must name the directory before compinit runs, which is why both lines are ours and in this order.
        return Target(
            directory / f"_{PROG_NAME}",
            home / ".zshrc",
            (f"fpath=({_home_relative(directory, home, tilde=True)} $fpath)", "autoload -Uz compinit && compinit"),
            "exec zsh (or open a new terminal)",
        )
    if shell is Shell.fish:
        path = config / "fish" / "completions" / f"{PROG_NAME}.fish"
        return Target(path, None, (), "open a new fish shell (it loads completions from there by itself)")
    if sys.platform == "win32":
        profile = home / "Documents" / "PowerShell" / "Microsoft.PowerShell_profile.ps1"
    else:
        profile = config / "powershell" / "Microsoft.PowerShell_profile.ps1"
    return Target(profile, None, (), ". $PROFILE (or open a new PowerShell)")


def write(target: Target, shell: Shell, text: str) -> list[str]:
    """Install `text` at `target`, changing nothing that is already right; return what to tell the user."""
    said = []
    if shell is Shell.powershell:
        # A profile is the user's own script: ours lives between markers, replaced in place on a new install.
        changed = _put_block(target.script, text)
        said.append(f"{shell} completion {'added to' if changed else 'up to date in'} {target.script}")
    else:
        target.script.parent.mkdir(parents=True, exist_ok=True)
        changed = not target.script.is_file() or target.script.read_text() != text
        if changed:
            target.script.write_text(text)
        said.append(f"{shell} completion {'written to' if changed else 'up to date in'} {target.script}")
    if target.rc_file is not None:
        added = _ensure_lines(target.rc_file, target.rc_lines)
        said.append(f"added to {target.rc_file}: {'; '.join(added)}" if added else f"{target.rc_file} already loads it")
    said.append(f"to use it now: {target.reload}")
    return said


def _ensure_lines(rc_file: Path, lines: tuple[str, ...]) -> list[str]:
    """Append the lines of `lines` that the file does not already have in this order, once."""
    existing = [line.strip() for line in rc_file.read_text().splitlines()] if rc_file.is_file() else []
    position = -1
    missing = list(lines)
    for index, line in enumerate(lines):
        try:
            position = existing.index(line, position + 1)
        except ValueError:
            missing = list(lines[index:])  # what follows a missing line must come after it, so it goes too
            break
    else:
        missing = []
    if missing:
        rc_file.parent.mkdir(parents=True, exist_ok=True)
        before = rc_file.read_text() if rc_file.is_file() else ""
        separator = "" if not before or before.endswith("\n") else "\n"
        rc_file.write_text(before + separator + "\n".join(["# gateway shell completion", *missing]) + "\n")
    return missing


def _put_block(path: Path, text: str) -> bool:
    """Put `text` between our markers in `path`: appended the first time, replaced after. True if it changed."""
    block = f"{BEGIN}\n{text.rstrip()}\n{END}\n"
    before = path.read_text() if path.is_file() else ""
    start = before.find(BEGIN)
    end = before.find(END, start)
    if start >= 0 and end >= 0:
        after = before[:start] + block + before[end + len(END) :].removeprefix("\n")
    else:
        separator = "" if not before or before.endswith("\n") else "\n"
        after = before + separator + block
    if after == before:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(after)
    return True


def _home_relative(path: Path, home: Path, *, tilde: bool = False) -> str:
    """`path` as the rc file should name it: through $HOME (or ~), so the line survives a moved home."""
    try:
        relative = path.relative_to(home)
    except ValueError:
        return str(path)
    return f"{'~' if tilde else '$HOME'}/{relative.as_posix()}"
