"""The ablation script runs every variant and writes its table."""
import json
import os

import pytest

from scripts import ablation


@pytest.mark.slow
def test_ablation_table(tmp_path, tiny_json):
    out = tmp_path / "ablation.md"
    ablation.main(["--data_path", os.path.dirname(tiny_json), "--dataset", os.path.basename(tiny_json),
                   "--runs_dir", str(tmp_path / "runs"), "--out", str(out), "--epoch", "1", "--student_epoch", "1",
                   "--embed_size", "8", "--batch_size", "64"])
    text = out.read_text()
    for label, _ in ablation.VARIANTS:
        assert f"| {label} |" in text
    assert "| teacher |" in text and "| teacher (no prompt) |" in text
    rows = json.loads((tmp_path / "ablation.json").read_text())
    assert len(rows) == len(ablation.VARIANTS)
    # the no-prompt variant distilled its own teacher, the others one shared teacher; no variant's
    # student run trained a teacher of its own
    ckpts = {r["variant"]: r["teacher_ckpt"] for r in rows}
    assert len({v for k, v in ckpts.items() if k != "w/o prompt"}) == 1
    assert ckpts["w/o prompt"] != ckpts["PromptMM (full)"] and all(os.path.isfile(c) for c in ckpts.values())
    assert not any(r["teacher_trained"] for r in rows)
    for r in rows:
        assert r["flags"] == " ".join(dict(ablation.VARIANTS)[r["variant"]])
