"""bench/scale.py on a small explicit shape: a few steps per stage, the epoch projected, a user sample."""
import pytest

from bench import scale


@pytest.mark.slow
def test_scale_check_projects_epochs_from_a_few_steps(tmp_path, capsys):
    scale.main(["--users", "400", "--items", "300", "--interactions", "8000", "--modalities", "image:16,text:8",
                "--batch_size", "1024", "--steps", "2", "--eval_users", "50", "--out", str(tmp_path),
                "--threads", "1"])
    (report,) = tmp_path.glob("scale-u400-i300-n8000-*.md")
    text = report.read_text()
    assert "teacher step (mean of 2)" in text and "distillation epoch, projected (" in text
    assert "validation on 50 of" in text and "Peak resident memory" in text
    assert "set-up: PCA hard tokens" in text
