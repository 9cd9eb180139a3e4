"""The run cache: one folder per config, a finished run is reloaded and gives the same metrics."""
import dataclasses

import torch

from pnca_utils.config import make_config
from pnca_utils.experiments.runs import cached_fit, is_finished, run_dir, run_key


def _config(**changes):
    return make_config("proxynca++", "ci", weights=None, epochs=1, batch_size=16, embedding_dim=16,
                       lr_milestones=(1,), lr_schedule="step", **changes)


def test_key_names_the_run_and_changes_with_any_field():
    config = _config()
    assert run_key(config) == run_key(_config()) and run_key(config).startswith("proxynca-seed0-")
    for field, value in [("temperature", 1.0), ("seed", 1), ("eval_every", 2), ("pooling", "avg")]:
        assert run_key(dataclasses.replace(config, **{field: value})) != run_key(config), field


def test_finished_run_is_reloaded_not_retrained(tiny_data, tmp_path, monkeypatch):
    config = _config()
    assert not is_finished(config, tmp_path)
    first = cached_fit(config, tiny_data, root=tmp_path, progress=False)
    assert is_finished(config, tmp_path)  # the tuple lr_milestones survives the JSON round trip
    assert not is_finished(_config(seed=1), tmp_path)
    stamp = (run_dir(config, tmp_path) / "checkpoint.pt").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not take an optimiser step")

    monkeypatch.setattr(torch.optim.Adam, "step", no_training)
    again = cached_fit(config, tiny_data, root=tmp_path, progress=False)
    assert again.metrics == first.metrics and again.history == first.history
    assert (run_dir(config, tmp_path) / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))


def test_damaged_metrics_file_means_not_finished(tmp_path):
    config = _config()
    run_dir(config, tmp_path).mkdir(parents=True)
    (run_dir(config, tmp_path) / "metrics.json").write_text("{not json")
    assert not is_finished(config, tmp_path)
