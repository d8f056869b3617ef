"""The secret and the `serve` command: where it comes from, when the service refuses to start, how a header is
judged; `innereye-batch --help` imports none of the service's libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from innereye_batch.cli import app
from innereye_batch.errors import UsageError
from innereye_batch.service.auth import ENVIRONMENT_VARIABLE, check, is_loopback, read_secret, require_secret
from innereye_batch.service.options import ModelSource, default_model_id


def test_a_header_is_missing_wrong_or_right() -> None:
    assert check(None, "s3cret") == 401
    assert check("", "s3cret") == 403
    assert check("s3cret ", "s3cret") == 403
    assert check("S3CRET", "s3cret") == 403
    assert check("s3cr\xe9t", "s3cret") == 403  # any latin-1 header value is comparable
    assert check("s3cret", "s3cret") is None
    assert check(None, None) is None  # --no-auth


def test_the_secret_comes_from_a_file_or_the_environment_never_both(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("  from-file\n")
    assert read_secret(secret_file, environ={}) == "from-file"
    assert read_secret(None, environ={ENVIRONMENT_VARIABLE: "from-env"}) == "from-env"
    assert read_secret(None, environ={}) is None
    with pytest.raises(UsageError, match="not both"):
        read_secret(secret_file, environ={ENVIRONMENT_VARIABLE: "from-env"})
    secret_file.write_text("\n")
    with pytest.raises(UsageError, match="empty"):
        read_secret(secret_file, environ={})
    with pytest.raises(UsageError, match="set but empty"):
        read_secret(None, environ={ENVIRONMENT_VARIABLE: " "})
    with pytest.raises(UsageError, match="cannot be read"):
        read_secret(tmp_path / "missing", environ={})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.org", False)],
)  # fmt: skip
def test_no_auth_only_on_a_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    if loopback:
        assert require_secret(None, no_auth=True, host=host) is None
    else:
        with pytest.raises(UsageError, match="loopback"):
            require_secret(None, no_auth=True, host=host)
    with pytest.raises(UsageError, match="no API secret"):
        require_secret(None, no_auth=False, host=host)
    assert require_secret("s", no_auth=False, host=host) == "s"


def test_model_ids() -> None:
    assert ModelSource.parse("Prostate:3=/models/final") == ModelSource(Path("/models/final"), "Prostate:3")
    assert ModelSource.parse("/models/final") == ModelSource(Path("/models/final"), None)
    with pytest.raises(UsageError, match="must be letters"):
        ModelSource.parse("bad id/..=/models/final")
    assert default_model_id("Sample Phantom/Abdomen") == "Sample_Phantom_Abdomen:1"


def test_serve_refuses_to_start_without_a_secret_or_with_no_auth_on_a_public_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    base = ["serve", "--model", "sample_data/final_model", "--state-dir", str(tmp_path / "state")]
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 2 and "no API secret" in " ".join(result.output.split())
    result = CliRunner().invoke(app, [*base, "--no-auth", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "loopback" in result.output
    result = CliRunner().invoke(app, [*base, "--max-batch", "0"], env={ENVIRONMENT_VARIABLE: "s"})
    assert result.exit_code == 2 and "--max-batch" in result.output
    assert not (tmp_path / "state").exists()  # refused before anything was written


def test_help_imports_no_service_library() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from innereye_batch.cli import app;"
        "r = CliRunner().invoke(app, ['--help']); assert 'serve' in r.output, r.output;"
        "r = CliRunner().invoke(app, ['serve', '--help']); assert '--max-wait-ms' in r.output, r.output;"
        "print([m for m in ('fastapi', 'uvicorn', 'prometheus_client', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
