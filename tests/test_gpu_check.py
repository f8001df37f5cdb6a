"""tools/gpu_check.py --cpu-dry-run: every measurement of the one-call GPU check runs on the CPU at
tiny sizes, without zstandard and torchdata (absent on the GPU machine), and records itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROWS_PER_SECTION = {"device": 1, "data": 1, "training": 4, "cluster": 2, "sampling": 4, "llama": 2}  # evaluation: 1 + estimators


@pytest.mark.data
@pytest.mark.slow
def test_cpu_dry_run_records_every_measurement(tmp_path: Path, data_dir: Path) -> None:
    # a fresh interpreter, so that the blocked modules are blocked before anything imports them
    # (in this process the other tests have imported zstandard already)
    command = [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--cpu-dry-run", "--out", str(tmp_path),
               "--block-modules", "zstandard,torchdata"]
    proc = subprocess.run(command, env={**os.environ, "EDLM_DATA_DIR": str(data_dir)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    sections = Counter(row["section"] for row in rows)
    assert sections.pop("evaluation") >= 2 and sections == ROWS_PER_SECTION
    assert [row["error"] for row in rows if not row["ok"] or row["error"]] == []
    training = [row["measurement"] for row in rows if row["section"] == "training"]
    assert all(m["tokens_per_s"] > 0 for m in training)
    assert [m["compiled"] for m in training] == [False, True, False, True]
    assert all(m["data_wait_mean_s"] >= 0 for m in training if m["path"] == "trainer")
    fsdp, resume = (row["measurement"] for row in rows if row["section"] == "cluster")
    assert fsdp["path"] == "fsdp2" and fsdp["backend"] == "gloo" and fsdp["compiled"]
    assert resume["resumed"] == resume["uninterrupted"]
    evaluation = [row["name"] for row in rows if row["section"] == "evaluation"]
    assert evaluation[0] == "MDLM NELBO, B = 2" and all(name.startswith("EDLM ") for name in evaluation[1:])
    edlm = next(row["measurement"] for row in rows if row["name"].startswith("EDLM-AR"))
    assert edlm["vs_model"]["predicted_s_per_sample"] > 0
    llama_train, llama_sample = (row["measurement"] for row in rows if row["section"] == "llama")
    assert llama_train["path"] == "fsdp2" and llama_train["backend"] == "gloo" and llama_train["compiled"]
    assert llama_train["tokens_per_s"] > 0 and llama_train["llama"]["n_kv_heads"] == 2
    # 6 N + 12 n_layers n_heads head_dim L: N without the input embedding (untied: the output layer counts)
    embedding = 320 * 64  # rows: the 256 data ids and the mask, rounded up to a multiple of 64
    assert llama_train["flops_per_token"] == 6 * (llama_train["parameters"] - embedding) + 12 * 2 * 64 * 32
    assert llama_sample["forward_tokens_per_s"] > 0 and llama_sample["steps"] == 4

    table = (tmp_path / "table.md").read_text()
    assert "torch.compile backend: aot_eager; blocked modules: zstandard,torchdata" in table
    assert all(f"| {row['section']} | {row['name']} |" in table for row in rows)
    assert "FAILED" not in table and table in proc.stdout
