"""``python -m bench.fault`` leaves nothing behind unless ``--keep``, and reports rounded seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fault import run_directory
from bench.fault_report import rounded


def test_the_run_directory_is_removed_even_when_the_run_fails() -> None:
    with pytest.raises(RuntimeError), run_directory(keep=False) as root:
        (root / "logs").mkdir()
        raise RuntimeError("the cluster did not start")
    assert not root.exists()


def test_the_run_directory_is_kept_with_keep(capsys: pytest.CaptureFixture[str]) -> None:
    with run_directory(keep=True) as root:
        (root / "cluster.toml").write_text("")
    try:
        assert (root / "cluster.toml").exists()
        assert f"kept in {root}" in capsys.readouterr().out
    finally:
        for path in root.iterdir():
            path.unlink()
        Path(root).rmdir()


def test_report_seconds_are_rounded_to_milliseconds() -> None:
    report = {"recovery_seconds": 0.020363027000712464, "faults": [{"start": 4.122959385000286, "n": 3}], "ok": True}
    assert rounded(report) == {"recovery_seconds": 0.02, "faults": [{"start": 4.123, "n": 3}], "ok": True}
