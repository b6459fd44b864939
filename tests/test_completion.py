"""`gateway completion`: the scripts, their installation in a temporary HOME, and bash really completing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.main import main

VENV_BIN = Path(sys.executable).parent
SHELLS = ("bash", "zsh", "fish", "powershell")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


def snapshot(home: Path) -> dict[str, str]:
    return {str(path.relative_to(home)): path.read_text() for path in sorted(home.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(
    ("shell", "registers"),
    [
        ("bash", "complete -o default -F _gateway_completion gateway"),
        ("zsh", "compdef _gateway_completion gateway"),
        ("fish", "complete --command gateway"),
        ("powershell", "Register-ArgumentCompleter -Native -CommandName gateway"),
    ],
)
def test_the_script_is_printed_for_each_shell(
    shell: str, registers: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["completion", shell]) == 0

    out = capsys.readouterr().out
    assert registers in out
    assert f"_GATEWAY_COMPLETE=complete_{shell}" in out or f'"complete_{shell}"' in out
    assert snapshot(home) == {}, "printing installs nothing"


def test_an_unknown_shell_is_a_usage_error(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "tcsh"]) == 2
    assert "bash" in capsys.readouterr().err


def test_install_writes_each_shell_s_usual_place_once(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (home / ".bashrc").write_text("alias ll='ls -l'")  # no final newline: ours must still go on a line of its own
    for shell in SHELLS:
        assert main(["completion", shell, "--install"]) == 0
    first = capsys.readouterr().out

    files = snapshot(home)
    assert set(files) == {
        ".bashrc",
        ".bash_completion.d/gateway",
        ".zshrc",
        ".zsh/completion/_gateway",
        ".config/fish/completions/gateway.fish",
        ".config/powershell/Microsoft.PowerShell_profile.ps1",
    }
    assert files[".bashrc"].splitlines() == [
        "alias ll='ls -l'",
        "# gateway shell completion",
        '[ -r "$HOME/.bash_completion.d/gateway" ] && . "$HOME/.bash_completion.d/gateway"',
    ]
    assert files[".zshrc"].splitlines() == [
        "# gateway shell completion",
        "fpath=(~/.zsh/completion $fpath)",
        "autoload -Uz compinit && compinit",
    ]
    assert files[".zsh/completion/_gateway"].startswith("#compdef gateway\n")  # what compinit looks for in fpath
    assert "Register-ArgumentCompleter" in files[".config/powershell/Microsoft.PowerShell_profile.ps1"]
    assert "to use it now: source ~/.bashrc" in first
    assert "to use it now: exec zsh" in first

    for shell in SHELLS:
        assert main(["completion", shell, "--install"]) == 0
    second = capsys.readouterr().out

    assert snapshot(home) == files
    assert "written to" not in second
    assert "added to" not in second
    assert second.count("up to date in") == 4


def test_zsh_gets_compinit_again_when_the_user_s_own_runs_before_our_fpath(home: Path) -> None:
    (home / ".zshrc").write_text("autoload -Uz compinit && compinit\nexport EDITOR=vi\n")

    assert main(["completion", "zsh", "--install"]) == 0
    assert main(["completion", "zsh", "--install"]) == 0

    assert (home / ".zshrc").read_text().splitlines() == [
        "autoload -Uz compinit && compinit",
        "export EDITOR=vi",
        "# gateway shell completion",
        "fpath=(~/.zsh/completion $fpath)",
        "autoload -Uz compinit && compinit",
    ]


def test_zsh_lines_the_user_already_has_in_order_are_not_added(home: Path) -> None:
    zshrc = "fpath=(~/.zsh/completion $fpath)\nplugins=(git)\n  autoload -Uz compinit && compinit\n"
    (home / ".zshrc").write_text(zshrc)

    assert main(["completion", "zsh", "--install"]) == 0

    assert (home / ".zshrc").read_text() == zshrc


def test_powershell_keeps_the_user_s_profile_and_replaces_an_older_script_in_place(home: Path) -> None:
    profile = home / ".config" / "powershell" / "Microsoft.PowerShell_profile.ps1"
    profile.parent.mkdir(parents=True)
    profile.write_text("Set-Alias g git\n")
    assert main(["completion", "powershell", "--install"]) == 0
    installed = profile.read_text()
    with profile.open("a") as f:
        f.write("Set-Alias k kubectl\n")
    # A profile holding the script of an older release.
    profile.write_text(profile.read_text().replace("MenuComplete", "Complete"))

    assert main(["completion", "powershell", "--install"]) == 0

    assert profile.read_text() == installed + "Set-Alias k kubectl\n"
    assert profile.read_text().count("# >>> gateway completion >>>") == 1


def test_fish_and_powershell_follow_xdg_config_home(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))

    assert main(["completion", "fish", "--install"]) == 0
    assert main(["completion", "powershell", "--install"]) == 0

    assert (tmp_path / "xdg" / "fish" / "completions" / "gateway.fish").is_file()
    assert (tmp_path / "xdg" / "powershell" / "Microsoft.PowerShell_profile.ps1").is_file()
    assert snapshot(home) == {}


def bash_complete(home: Path, *words: str) -> list[str]:
    """What bash offers for `words` (the last one being completed), with the completion the install set up: a
    login-less bash reads the ~/.bashrc we wrote, and its completion function calls `gateway` back."""
    bash = shutil.which("bash")
    assert bash is not None
    assert (VENV_BIN / "gateway").is_file(), "the `gateway` script: pip install -e '.[dev]'"
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("_GATEWAY")},
        "HOME": str(home),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
    }
    words_array = " ".join(f"'{word}'" for word in words)
    program = f"""
        . "$HOME/.bashrc"
        complete -p gateway >/dev/null || exit 3
        COMP_WORDS=({words_array}); COMP_CWORD={len(words) - 1}
        COMP_LINE="${{COMP_WORDS[*]}}"; COMP_POINT=${{#COMP_LINE}}
        _gateway_completion gateway "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    result = subprocess.run(
        [bash, "--noprofile", "--norc", "-c", program],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.parametrize(
    ("words", "offered"),
    [
        (("gateway", "k"), ["keys"]),
        (("gateway", ""), ["serve", "check", "version", "completion", "keys"]),
        (("gateway", "keys", ""), ["create", "list", "show", "update", "revoke", "rotate", "usage"]),
        (("gateway", "completion", ""), ["bash", "zsh", "fish", "powershell"]),
        (("gateway", "serve", "--wo"), ["--workers"]),
    ],
)
def test_bash_completes_commands_and_options_after_install(
    words: tuple[str, ...], offered: list[str], home: Path
) -> None:
    assert main(["completion", "bash", "--install"]) == 0

    assert sorted(bash_complete(home, *words)) == sorted(offered)
