"""A real third-party trainer as the proxy: Hugging Face transformers' Trainer (a tiny GPT-2 built from a
config, nothing downloaded), swept through its entry point on the CPU, then collected, fitted and exported."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from powerlaw_cli.cli import app

EXAMPLE = Path(__file__).parent.parent / "examples" / "hf_trainer" / "sweep.toml"


def invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_transformers_trainer_is_swept_collected_fitted_and_exported(tmp_path):
    out = tmp_path / "hf"
    code, text, stderr = invoke("launch", EXAMPLE, "--out", out, "--executor", "local")
    assert code == 0, stderr
    assert "results: 9 ok" in text
    record = json.loads(next((out / "runs").glob("*/*.json")).read_text())
    assert record["params_non_embedding"] > 0 and record["steps"] > 0 and record["torch_version"] is None
    code, text, stderr = invoke("collect", out)
    assert code == 0 and "9 runs" in text, stderr
    code, text, stderr = invoke("fit", out)
    assert code == 0, stderr
    fit = json.loads((out / "fit" / "fit.json").read_text())
    used = [cell for cell in fit["cells"] if cell["status"] == "used"]
    assert sorted(cell["tokens"] for cell in used) == [256, 512, 1024]
    assert all(3e-3 < cell["lr_opt"] < 3e-1 for cell in used)  # an optimum inside the swept LRs
    code, text, stderr = invoke("export", out, "--tokens", "2048", "--batch-size", "4")
    assert code == 0, stderr
    assert 1e-3 < json.loads(text)["recommended"]["peak_lr"]["value"] < 1
