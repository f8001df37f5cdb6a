"""tools/compat_check.py without installing anything: pytest's summary read, the docs table
rewritten between its markers from the records, bad arguments refused in one line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compat():
    spec = importlib.util.spec_from_file_location("compat_check", REPO / "tools" / "compat_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compat_check"] = module
    spec.loader.exec_module(module)
    return module


def record(passed: int, failed: int = 0, errors: int = 0, code: int = 0) -> dict:
    return {"torch": "x", "python": "3.11.7", "date": "2026-12-07", "commit": "abc1234", "exit_code": code,
            "minutes": 11.2, "log": "log", "passed": passed, "failed": failed, "skipped": 2, "errors": errors}


def test_pytest_summaries_are_counted(compat):
    output = "....\n=== short test summary info ===\nSKIPPED [2] tests/test_models.py:65: needs CUDA\n"
    assert compat.summarise(output + "805 passed, 2 skipped in 721.64s (0:12:01)\n") == \
        {"passed": 805, "failed": 0, "skipped": 2, "errors": 0}
    assert compat.summarise("1 failed, 560 passed, 3 skipped, 2 errors in 9.0s\n") == \
        {"passed": 560, "failed": 1, "skipped": 3, "errors": 2}
    assert compat.summarise("no tests ran\n") == {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}


def test_the_table_is_rewritten_between_its_markers_in_version_order(compat, tmp_path):
    page = tmp_path / "compatibility.md"
    page.write_text("# head\n\n<!-- compat-table -->\nold row\n<!-- /compat-table -->\n\ntail\n")
    compat.write_table(page, {"2.15.0": record(805), "2.11.0": record(804, failed=1, code=1), "2.13.0": record(805)})
    text = page.read_text()
    assert text.startswith("# head\n") and text.endswith("\ntail\n") and "old row" not in text
    rows = [line for line in text.splitlines() if line.startswith("| 2.")]
    assert [row.split(" | ")[0] for row in rows] == ["| 2.11.0", "| 2.13.0", "| 2.15.0"]
    assert rows[0].startswith("| 2.11.0 | FAIL | 804 | 1 | 2 |") and rows[1].startswith("| 2.13.0 | pass | 805 | 0 | 2 |")
    assert compat.verdict(record(805, errors=1)) == "FAIL"


@pytest.mark.parametrize("argv,message", [
    (["2.x"], "torch version '2.x' is not a release number like 2.13.0"),
    ([], "name the torch versions to check, or --table to write the table from the records"),
    (["--table", "missing.md"], "--table missing.md: no such file"),
])
def test_bad_arguments_are_one_line(compat, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["compat_check.py", "--venvs", str(tmp_path / "venvs"), *argv])
    with pytest.raises(SystemExit) as exit_info:
        compat.main()
    assert str(exit_info.value) == f"error: {message}"
    assert not (tmp_path / "venvs").exists() or not any((tmp_path / "venvs").iterdir())


def test_a_damaged_record_file_is_named(compat, tmp_path, monkeypatch):
    (tmp_path / "page.md").write_text("<!-- compat-table -->\n<!-- /compat-table -->\n")
    (tmp_path / "venvs").mkdir()
    (tmp_path / "venvs" / "results.json").write_text("{not json")
    monkeypatch.setattr(sys, "argv", ["compat_check.py", "--venvs", str(tmp_path / "venvs"), "--table",
                                      str(tmp_path / "page.md")])
    with pytest.raises(SystemExit, match="results.json is damaged"):
        compat.main()
    (tmp_path / "venvs" / "results.json").write_text(json.dumps({"2.13.0": record(805)}))
    with pytest.raises(SystemExit) as exit_info:
        compat.main()
    assert exit_info.value.code == 0 and "| 2.13.0 | pass | 805 |" in (tmp_path / "page.md").read_text()
