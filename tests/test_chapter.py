"""The set-up every chapter shares: output folders and run overrides from the parameters."""
from pnca_utils.chapter import workspace


def test_workspace_creates_the_output_folders(tmp_path):
    figures, results, runs, overrides = workspace(tmp_path / "build", "default")
    assert figures == tmp_path / "build" / "figures" and figures.is_dir()
    assert results == tmp_path / "build" / "results" and results.is_dir()
    assert runs == tmp_path / "build" / "runs" and not runs.exists()  # the run cache makes its own folders
    assert overrides == {"device": "cpu"}


def test_ci_runs_one_epoch_unless_epochs_is_given(tmp_path):
    assert workspace(tmp_path, "ci").overrides == {"device": "cpu", "epochs": 1}
    assert workspace(tmp_path, "ci", epochs=3).overrides == {"device": "cpu", "epochs": 3}
    assert workspace(tmp_path, "default", epochs=2, device="cuda").overrides == {"device": "cuda", "epochs": 2}
