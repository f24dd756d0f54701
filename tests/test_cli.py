"""The `hmtx` command line: help lists exactly the commands that exist; selfcheck passes."""

import subprocess
import sys

from hmtx.host import cli


def test_help_lists_exactly_the_registered_commands():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = set(sub.choices)
    assert "selfcheck" in names
    # Every listed command resolves to a callable handler (nothing advertised that does not exist).
    for name, p in sub.choices.items():
        assert callable(p.get_default("func")), name
    out = subprocess.run([sys.executable, "-m", "hmtx.host.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in names:
        assert name in out.stdout


def test_selfcheck_passes(capsys):
    assert cli.main(["selfcheck", "--trials", "1"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "smollm" in out


def test_unknown_command_is_an_error():
    out = subprocess.run([sys.executable, "-m", "hmtx.host.cli", "frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_help_does_not_import_torch_or_transformers():
    # Every command module is imported to build `hmtx --help`; heavy libraries belong inside the
    # command that needs them, or `--help` and shell completion take seconds.
    code = ("import sys; from hmtx.host import cli; cli.build_parser(); "
            "print(' '.join(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"`hmtx --help` imports {out.strip()}"
