"""The committed man page and completions equal the generator's output, render, and load in real shells."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import docgen  # tools/docgen, on the path through pytest's `pythonpath` setting

ROOT = Path(__file__).resolve().parents[1]
FIX = "run `python tools/gen_docs.py` and commit the result"
BIN = str(Path(sys.executable).parent)  # where the `gemma` console script lives


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return docgen.generate()


@pytest.mark.parametrize("rel", sorted(docgen.OUTPUTS))
def test_committed_file_matches_generator(rel: str, generated: dict[str, str]) -> None:
    path = ROOT / rel
    assert path.exists(), f"{rel} is missing: {FIX}"
    assert path.read_text(encoding="utf-8") == generated[rel], f"{rel} is out of date with the CLI: {FIX}"


def test_check_mode_is_machine_independent_and_names_drifted_files(tmp_path: Path) -> None:
    for rel in docgen.OUTPUTS:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    env = {**os.environ, "HOME": str(tmp_path), "GEMMA_MODELS": str(tmp_path / "elsewhere"), "COLUMNS": "37", "LANG": "C"}
    cmd = [sys.executable, str(ROOT / "tools/gen_docs.py"), "--check", "--root", str(tmp_path)]
    clean = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert clean.returncode == 0, clean.stderr
    (tmp_path / "completions/gemma.fish").write_text("# edited by hand\n")
    (tmp_path / "man/gemma.1").unlink()
    stale = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert stale.returncode == 1
    assert "drifted: completions/gemma.fish" in stale.stderr and "drifted: man/gemma.1" in stale.stderr
    assert "completions/gemma.bash" not in stale.stderr
    write = subprocess.run(cmd[:-3] + ["--root", str(tmp_path)], capture_output=True, text=True, env=env, timeout=60)
    assert write.returncode == 0
    assert subprocess.run(cmd, capture_output=True, env=env, timeout=60).returncode == 0


def _visible_commands() -> dict[str, object]:
    from gemma_cli.cli.app import app

    group = typer.main.get_command(app)
    return {name: c for name, c in group.commands.items() if not c.hidden}


def test_man_page_lists_every_command_and_option(generated: dict[str, str]) -> None:
    man = generated["man/gemma.1"]
    for name, command in _visible_commands().items():
        assert f"\n.SS\ngemma {name.replace('-', chr(92) + '-')} [OPTIONS]" in man, name  # groff: \- in rpc-worker
        for param in command.params:
            if param.hidden:
                continue
            for opt in list(param.opts) + list(getattr(param, "secondary_opts", [])):
                if opt.startswith("-"):
                    assert f"\\fB{opt.replace('-', chr(92) + '-')}\\fR" in man, f"{name} {opt}"
    assert "__complete-models" not in man
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "ENVIRONMENT", "FILES", "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
        assert f"\n.SH {section}\n" in man
    for var in ("GEMMA_MODELS", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE"):
        assert f"\\fB{var}\\fR" in man


def test_man_page_renders_without_warnings() -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed (Debian: apt-get install groff-base)")
    proc = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(ROOT / "man/gemma.1")], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    text = subprocess.run([groff, "-man", "-Tascii", str(ROOT / "man/gemma.1")], capture_output=True, text=True).stdout
    text = re.sub(".\b", "", text)  # undo overstrike bold
    assert "EXIT STATUS" in text and "gemma run [OPTIONS]" in text


def test_man_command_displays_the_page() -> None:
    man = shutil.which("man")
    if man is None:
        pytest.skip("man is not installed (Debian: apt-get install man-db)")
    env = {**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"}
    proc = subprocess.run([man, "-l", str(ROOT / "man/gemma.1")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "GEMMA(1)" in proc.stdout


# -- shells -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with two manifests: what `gemma __complete-models` lists; and folders gemma never writes, which
    it must not list (a name like `$(touch PWNED)` ran as a command through bash's `compgen -W`)."""
    root = tmp_path_factory.mktemp("store")
    for family, tag in (("gemma3", "270m"), ("mine", "latest"), ("$(touch${IFS}PWNED)", "latest"), ("evil\x1b[31m", "x"),
                        ("a b", "latest"), ("-rf", "latest"), ("ok", "t\nag")):
        (root / "manifests" / family).mkdir(parents=True, exist_ok=True)
        (root / "manifests" / family / f"{tag}.json").write_text("{}")
    return root


def shell_env(store: Path) -> dict[str, str]:
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "GEMMA_MODELS": str(store)}


def test_complete_models_helper_lists_the_store(store: Path) -> None:
    env = shell_env(store)
    out = subprocess.run([sys.executable, "-m", "gemma_cli", "__complete-models"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.split() == ["gemma3:270m", "mine:latest"]
    cat = subprocess.run([sys.executable, "-m", "gemma_cli", "__complete-models", "--catalog"], capture_output=True, text=True, env=env)
    names = cat.stdout.split()
    assert {"gemma3:270m", "mine:latest"} <= set(names) and len(names) > 2 and names == sorted(names)


BASH_DRIVER = r"""
source "$1"
complete -p gemma
c() {
    COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}
    read -r -a COMP_WORDS <<< "$COMP_LINE"
    COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); [[ $COMP_LINE == *" " ]] && COMP_CWORD=${#COMP_WORDS[@]}
    COMPREPLY=(); _gemma
    echo "$1=>${COMPREPLY[*]}"
}
c "gemma "
c "gemma ru"
c "gemma run --max-t"
c "gemma run -s hello "
c "gemma rm mine:latest "
c "gemma run gemma3:"
"""


def test_bash_script_loads_and_completes(store: Path, tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    script = ROOT / "completions/gemma.bash"
    assert subprocess.run([bash, "-n", str(script)], capture_output=True).returncode == 0
    driver = tmp_path / "driver.sh"
    driver.write_text(BASH_DRIVER)
    proc = subprocess.run([bash, str(driver), str(script)], capture_output=True, text=True, env=shell_env(store), timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "PWNED").exists()
    lines = proc.stdout.splitlines()
    assert lines[0] == "complete -F _gemma gemma"
    got = dict(line.split("=>", 1) for line in lines[1:])
    commands = sorted(_visible_commands())
    assert got["gemma "].split() == commands
    assert got["gemma ru"].split() == [c for c in commands if c.startswith("ru")]
    assert got["gemma run --max-t"] == "--max-tokens"
    assert got["gemma run -s hello "].split() == ["gemma3:270m", "mine:latest"]
    assert got["gemma rm mine:latest "].split() == ["gemma3:270m", "mine:latest"]
    assert got["gemma run gemma3:"] == "270m"  # bash splits words at ':'; the prefix is trimmed


def _missing_shell(name: str) -> None:
    """Skip where the shell is simply absent; fail where CI promised it (.ci/run installs zsh and fish)."""
    if os.environ.get("GEMMA_TEST_REQUIRE_SHELLS"):
        pytest.fail(f"{name} is not installed, but GEMMA_TEST_REQUIRE_SHELLS is set")
    pytest.skip(f"{name} is not installed (Debian: apt-get install {name})")


def test_zsh_script_parses_and_registers() -> None:
    zsh = shutil.which("zsh")
    if zsh is None:
        _missing_shell("zsh")
    script = str(ROOT / "completions/_gemma")
    syntax = subprocess.run([zsh, "-n", script], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    load = 'autoload -U compinit && compinit -u -D && source "$1" && print -r -- $_comps[gemma] && whence -w _gemma_run'
    proc = subprocess.run([zsh, "-f", "-c", load, "zsh", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "_gemma" and "_gemma_run: function" in proc.stdout


def test_fish_script_parses_and_completes(store: Path) -> None:
    fish = shutil.which("fish")
    if fish is None:
        _missing_shell("fish")
    script = str(ROOT / "completions/gemma.fish")
    syntax = subprocess.run([fish, "--no-execute", script], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr

    def complete(line: str) -> list[str]:
        proc = subprocess.run([fish, "-N", "-c", f"source {script}; complete -C'{line}'"],
                              capture_output=True, text=True, env=shell_env(store), timeout=60)
        assert proc.returncode == 0, proc.stderr
        return [ln.split("\t")[0] for ln in proc.stdout.splitlines()]

    assert complete("gemma ") == sorted(_visible_commands())
    assert complete("gemma run --max-t") == ["--max-tokens"]
    assert complete("gemma rm ") == ["gemma3:270m", "mine:latest"]
