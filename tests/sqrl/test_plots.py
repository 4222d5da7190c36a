"""Evaluation plots are written as real PNG files, including for degenerate inputs."""
from sqrl.metrics import compute_metrics
from sqrl.plots import pcc_bars, scatter_per_dimension
from sqrl.schema import Assessment, Record

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_scatter_has_a_panel_per_scored_dimension_and_draws_missing_predictions(tmp_path):
    refs = [Record(audio="a", scores={"noise": s, "overall": 6 - s}) for s in (1, 2, 3, 4, 5)]
    preds = [Assessment(scores={"noise": s, "overall": 3}) for s in (1, 2, 4, 4, 5)]
    preds[2] = None  # a failed generation is drawn at the midpoint, as the metrics count it
    path = scatter_per_dimension(preds, refs, tmp_path / "plots" / "scatter.png")
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000


def test_pcc_bars_compare_models_and_draw_undefined_values(tmp_path):
    refs = [Record(audio="a", scores={"noise": s}) for s in (1, 3, 5)]
    good = compute_metrics([Assessment(scores={"noise": s}) for s in (1, 3, 5)], refs, embed=False)
    flat = compute_metrics([Assessment(scores={"noise": 3})] * 3, refs, embed=False)  # PCC undefined
    path = pcc_bars({"dimension-wise": good["pcc"], "unified": flat["pcc"]}, tmp_path / "pcc.png")
    assert path.read_bytes()[:8] == PNG


def test_empty_inputs_still_give_a_figure(tmp_path):
    assert scatter_per_dimension([], [], tmp_path / "s.png").read_bytes()[:8] == PNG
    assert pcc_bars({"model": compute_metrics([], [], embed=False)["pcc"]}, tmp_path / "p.png").read_bytes()[:8] == PNG


def test_pcc_bars_with_error_bars_and_reward_curves_with_gaps(tmp_path):
    from sqrl.plots import reward_curves

    path = pcc_bars({"a": {"noise": 0.5, "mean": 0.4}, "b": {"noise": None, "mean": 0.0}}, tmp_path / "e.png",
                    errors={"a": {"noise": 0.1, "mean": None}, "b": {"noise": 0.2}})
    assert path.read_bytes()[:8] == PNG
    curves = {"run": {"steps": [1, 2, 3], "mean": [1.0, None, 2.0], "lo": [0.5, None, 1.5], "hi": [1.5, None, 2.5]},
              "empty": {"steps": [], "mean": []}}
    assert reward_curves(curves, tmp_path / "r.png").read_bytes()[:8] == PNG
    assert reward_curves({}, tmp_path / "none.png").read_bytes()[:8] == PNG


def test_training_curves_draw_each_run_and_skip_rows_without_the_metric(tmp_path):
    from sqrl.plots import training_curves

    a = [{"step": 5, "loss": 2.0, "mean_token_accuracy": 0.5}, {"step": 10, "loss": 1.0}, {"train_runtime": 3.0}]
    b = [{"step": 5, "loss": 2.5}, {"step": 10, "loss": None}]
    assert training_curves({"random order": a, "grouped": b}, tmp_path / "loss.png").read_bytes()[:8] == PNG
    assert training_curves({}, tmp_path / "empty.png").read_bytes()[:8] == PNG
