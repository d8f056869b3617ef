"""The command line starts fast and answers --help / --version."""

import subprocess
import sys


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from innereye_batch.cli import app;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
        "assert 'scan' in r.output and 'inspect' in r.output;"
        "heavy = [m for m in ('torch', 'highdicom', 'SimpleITK', 'numpy', 'pydicom') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "innereye_batch", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("innereye-batch ")


def test_help_is_plain_click_text_with_brackets_kept() -> None:
    """Help renders as click's plain text: typer's rich formatter (rich markdown, traceback) is not even imported,
    which halves the start-up, and bracketed words such as the ``[explain]`` extra are not taken for rich markup
    and dropped."""
    code = (
        "import sys; from typer.testing import CliRunner; from innereye_batch.cli import app;"
        "r = CliRunner().invoke(app, ['run', '--help'], terminal_width=200); assert r.exit_code == 0, r.output;"
        "print('[explain] extra' in r.output, '[x>=0.1]' in r.output, 'typer.rich_utils' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "False"]
