"""Tables and figures of mapex.report, from synthetic result files."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fixtures_report import (run_record, standard_runs, write_history, write_response_npz, write_run,
                             write_samples_csv)
from mapex import report
from mapex.io import UserError


@pytest.fixture
def runs(tmp_path: Path) -> pd.DataFrame:
    return report.load_runs(standard_runs(tmp_path / "runs"))


@pytest.fixture
def legends(monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """Record the legend labels (and titles) of every figure saved, then save it as usual."""
    seen: list[set[str]] = []
    save = report._save

    def recording_save(fig, out_stem):
        labels = {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}
        seen.append(labels | {ax.get_title() for ax in fig.axes})
        save(fig, out_stem)

    monkeypatch.setattr(report, "_save", recording_save)
    return seen


def row(table: pd.DataFrame, criterion: str, ratio: float) -> pd.Series:
    match = table[(table["criterion"] == criterion) & np.isclose(table["ratio"], ratio)]
    assert len(match) == 1
    return match.iloc[0]


def assert_png_and_pdf(stem: Path) -> None:
    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
        path = stem.with_name(stem.name + suffix)
        assert path.stat().st_size > 1000, path
        assert path.read_bytes().startswith(magic)
    assert not [p for p in stem.parent.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- loading


def test_load_runs_one_row_per_file(tmp_path: Path, runs: pd.DataFrame) -> None:
    assert len(runs) == 2 + 2 * 2 * 2
    assert set(runs["criterion"]) == {"none", "map-ex", "l1"}
    assert runs["filters_after"].map(type).eq(dict).all()


def test_missing_file_names_it(tmp_path: Path) -> None:
    paths = standard_runs(tmp_path) + [tmp_path / "l1" / "r0.9" / "s0.json"]
    with pytest.raises(UserError, match=r"r0\.9.s0\.json: file not found"):
        report.load_runs(paths)


def test_invalid_json_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        report.load_runs([bad])


@pytest.mark.parametrize("field", ["macs", "filters_after", "latency_ms_cpu_b64"])
def test_missing_field_names_file_and_field(tmp_path: Path, field: str) -> None:
    record = run_record("l1", 0.3, 0, 0.7, 70.0)
    del record[field]
    path = write_run(tmp_path, record)
    with pytest.raises(UserError, match=rf"s0\.json: missing field '{field}'"):
        report.load_runs([path])


def test_wrong_type_names_field(tmp_path: Path) -> None:
    path = write_run(tmp_path, {**run_record("l1", 0.3, 0, 0.7, 70.0), "top1": "high"})
    with pytest.raises(UserError, match="field 'top1' has the wrong type"):
        report.load_runs([path])


def test_duplicate_runs_and_mixed_archs_are_refused(tmp_path: Path) -> None:
    first = write_run(tmp_path / "a", run_record("l1", 0.3, 0, 0.7, 70.0))
    second = write_run(tmp_path / "b", run_record("l1", 0.3, 0, 0.7, 70.0))
    with pytest.raises(UserError, match="several files"):
        report.load_runs([first, second])
    other = write_run(tmp_path / "c", run_record("l1", 0.3, 1, 0.7, 70.0, arch="vgg16_bn"))
    with pytest.raises(UserError, match="mix architectures"):
        report.load_runs([first, other])


def test_no_files_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no run files"):
        report.load_runs([])


# ----------------------------------------------------------------------------- summary


def test_summary_numbers_by_hand(runs: pd.DataFrame) -> None:
    table = report.summary_table(runs)
    ours = row(table, "map-ex", 0.3)
    # top1 = 0.78 - 0.03 + {0, 0.02}: 75 % and 77 %
    assert ours["top1_pct_mean"] == pytest.approx(76.0)
    assert ours["top1_pct_std"] == pytest.approx(2.0 / math.sqrt(2))
    assert ours["params_m_mean"] == pytest.approx(0.7)
    assert ours["params_m_std"] == pytest.approx(0.0)
    assert ours["macs_m_mean"] == pytest.approx(35.0)
    assert ours["size_mb_mean"] == pytest.approx(2.8)
    assert ours["latency_cpu_b1_ms_mean"] == pytest.approx(2.0)
    assert ours["latency_cpu_b64_ms_mean"] == pytest.approx(75.0)
    assert ours["params_removed_pct_mean"] == pytest.approx(30.0)
    assert ours["macs_removed_pct_mean"] == pytest.approx(30.0)
    assert ours["top1_before_finetune_pct_mean"] == pytest.approx(38.0)
    assert ours["n_seeds"] == 2


def test_speedup_against_mean_unpruned_latency(runs: pd.DataFrame) -> None:
    table = report.summary_table(runs)
    # "none" b64 latency: 100 and 110 ms (mean 105); l1 at 0.6: 40 and 50 ms
    speedups = [105 / 40, 105 / 50]
    l1 = row(table, "l1", 0.6)
    assert l1["speedup_cpu_b64_mean"] == pytest.approx(np.mean(speedups))
    assert l1["speedup_cpu_b64_std"] == pytest.approx(np.std(speedups, ddof=1))
    assert row(table, "none", 0.0)["speedup_cpu_b64_mean"] == pytest.approx(np.mean([105 / 100, 105 / 110]))


def test_no_speedup_without_unpruned_run(runs: pd.DataFrame) -> None:
    table = report.summary_table(runs[runs["criterion"] != "none"])
    assert "speedup_cpu_b64_mean" not in table
    assert "speedup" not in report.markdown_table(table)


def test_summary_order(runs: pd.DataFrame) -> None:
    table = report.summary_table(runs)
    assert list(zip(table["criterion"], table["ratio"])) == [
        ("none", 0.0), ("map-ex", 0.3), ("l1", 0.3), ("map-ex", 0.6), ("l1", 0.6)]


def test_gpu_latency_only_when_present(tmp_path: Path, runs: pd.DataFrame) -> None:
    assert "latency_cuda_b1_ms_mean" not in report.summary_table(runs)
    path = write_run(tmp_path / "gpu", run_record("l1", 0.3, 0, 0.7, 70.0, latency_ms_cuda_b1=0.5))
    table = report.summary_table(report.load_runs([path]))
    assert table["latency_cuda_b1_ms_mean"].iloc[0] == pytest.approx(0.5)
    assert "GPU latency b1 (ms)" in report.markdown_table(table)


def test_write_tables(tmp_path: Path, runs: pd.DataFrame) -> None:
    out_csv, out_md = tmp_path / "out" / "summary.csv", tmp_path / "out" / "summary.md"
    returned = report.write_tables(runs, out_csv, out_md)
    from_csv = pd.read_csv(out_csv)
    assert list(from_csv.columns) == list(returned.columns)
    assert {"top1_pct_mean", "top1_pct_std", "macs_m_mean", "speedup_cpu_b64_std", "n_seeds"} <= set(from_csv)
    assert from_csv["top1_pct_mean"].iloc[1] == pytest.approx(76.0)
    markdown = out_md.read_text()
    assert "76.0 ± 1.4" in markdown
    assert "Top-1 (%)" in markdown and "MACs (M)" in markdown and "CPU latency b64 (ms)" in markdown
    assert markdown.index("| none") < markdown.index("| map-ex") < markdown.index("| l1")


def test_markdown_without_tabulate(monkeypatch: pytest.MonkeyPatch, runs: pd.DataFrame) -> None:
    table = report.summary_table(runs)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tabulate" else find_spec(name, *a))
    lines = report.markdown_table(table).splitlines()
    assert lines[0].startswith("| Criterion | Ratio | Seeds | Top-1 (%) |")
    assert set(lines[1]) <= set("|-")
    assert len(lines) == 2 + len(table)
    assert "76.0 ± 1.4" in lines[3]


def test_single_seed_shows_mean_only(tmp_path: Path) -> None:
    path = write_run(tmp_path, run_record("l1", 0.3, 0, 0.7, 70.0))
    markdown = report.markdown_table(report.summary_table(report.load_runs([path])))
    assert " 70.0 " in markdown
    assert "±" not in markdown


# ----------------------------------------------------------------------------- figures


@pytest.mark.parametrize("plot", [report.plot_accuracy_vs_ratio, report.plot_accuracy_vs_macs,
                                  report.plot_filters_per_layer])
def test_run_figures_write_png_and_pdf(tmp_path: Path, runs: pd.DataFrame, plot, legends) -> None:
    stem = tmp_path / "figures" / plot.__name__
    plot(runs, stem)
    assert_png_and_pdf(stem)
    assert {"map-ex", "l1"} <= legends[0]


def test_new_criterion_reaches_table_and_figures(tmp_path: Path, legends) -> None:
    runs = report.load_runs(standard_runs(tmp_path / "runs", extra_criterion="entropy"))
    table = report.summary_table(runs)
    assert list(table["criterion"][:4]) == ["none", "map-ex", "entropy", "l1"]
    assert "| entropy" in report.markdown_table(table)
    for plot in (report.plot_accuracy_vs_ratio, report.plot_accuracy_vs_macs, report.plot_filters_per_layer):
        plot(runs, tmp_path / plot.__name__)
    assert all("entropy" in labels for labels in legends)


def test_filters_per_layer_ratio(tmp_path: Path, runs: pd.DataFrame, legends) -> None:
    report.plot_filters_per_layer(runs, tmp_path / "default")
    report.plot_filters_per_layer(runs, tmp_path / "explicit", ratio=0.6)
    assert any(text.startswith("Filters kept per layer at pruning ratio 0.3") for text in legends[0])
    assert any(text.startswith("Filters kept per layer at pruning ratio 0.6") for text in legends[1])
    assert "unpruned" in legends[0]
    with pytest.raises(UserError, match="ratio 0.9"):
        report.plot_filters_per_layer(runs, tmp_path / "absent", ratio=0.9)


def test_filters_per_layer_says_when_every_criterion_keeps_the_same_counts(tmp_path: Path, runs: pd.DataFrame,
                                                                           legends) -> None:
    note = "every criterion keeps the same count"
    report.plot_filters_per_layer(runs, tmp_path / "same")
    differing = runs.copy()
    is_l1 = differing["criterion"] == "l1"
    differing.loc[is_l1, "filters_after"] = [{k: v + 1 for k, v in after.items()} for after in runs.loc[is_l1, "filters_after"]]
    report.plot_filters_per_layer(differing, tmp_path / "differing")
    assert any(note in text for text in legends[0])
    assert not any(note in text for text in legends[1])


def test_legends_call_the_reference_the_unpruned_model(tmp_path: Path, runs: pd.DataFrame, legends) -> None:
    report.plot_accuracy_vs_ratio(runs, tmp_path / "ratio")
    report.plot_accuracy_vs_macs(runs, tmp_path / "macs")
    assert "unpruned (none)" in legends[0] and "unpruned (none)" in legends[1]
    assert "none" not in legends[1]


def test_response_maps(tmp_path: Path) -> None:
    stem = tmp_path / "response_maps"
    report.plot_response_maps(write_response_npz(tmp_path / "maps.npz"), stem)
    assert_png_and_pdf(stem)


def test_response_maps_label_rows_with_the_first_class_name(tmp_path: Path, monkeypatch) -> None:
    path = write_response_npz(tmp_path / "maps.npz")
    arrays = dict(np.load(path))
    arrays["image_titles"] = np.array(["ladybug, ladybeetle, lady beetle", "volleyball"])
    np.savez(path, **arrays)
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, stem: figures.append(fig))
    report.plot_response_maps(path, tmp_path / "out")
    row_labels = [ax.get_ylabel() for ax in figures[0].axes if ax.get_ylabel() not in ("", "response (a.u.)")]
    assert row_labels == ["ladybug", "volleyball"]


def test_response_maps_missing_array(tmp_path: Path) -> None:
    path = tmp_path / "maps.npz"
    np.savez(path, images=np.zeros((1, 3, 8, 8)), maps=np.zeros((1, 1, 8, 8)))
    with pytest.raises(UserError, match=r"maps.npz: missing arrays \['boxes', 'panel_titles'\]"):
        report.plot_response_maps(path, tmp_path / "out")
    with pytest.raises(UserError, match="absent.npz: file not found"):
        report.plot_response_maps(tmp_path / "absent.npz", tmp_path / "out")


def test_response_maps_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "maps.npz"
    np.savez(path, images=np.zeros((2, 3, 8, 8)), maps=np.zeros((2, 2, 8, 8)), boxes=np.zeros((0, 5)),
             panel_titles=np.array(["only one"]))
    with pytest.raises(UserError, match="1 titles"):
        report.plot_response_maps(path, tmp_path / "out")


def test_samples_study(tmp_path: Path, legends) -> None:
    stem = tmp_path / "samples_study"
    report.plot_samples_study(write_samples_csv(tmp_path / "study.csv"), stem)
    assert_png_and_pdf(stem)
    assert {"map-ex", "map"} <= legends[0]


def test_samples_study_without_the_before_fine_tuning_column_has_two_panels(tmp_path: Path, monkeypatch) -> None:
    import pandas as pd

    path = write_samples_csv(tmp_path / "study.csv")
    pd.read_csv(path).drop(columns="top1_before_finetune").to_csv(path, index=False)
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, stem: figures.append(fig))
    report.plot_samples_study(path, tmp_path / "out")
    assert [ax.get_ylabel() for ax in figures[0].axes] == ["Spearman ρ with all samples",
                                                          "Test top-1 after pruning\nand fine-tuning (%)"]


def test_samples_study_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "study.csv"
    path.write_text("criterion,n_per_class,seed,top1\nmap-ex,1,0,0.5\n")
    with pytest.raises(UserError, match=r"study.csv: missing columns \['spearman'\]"):
        report.plot_samples_study(path, tmp_path / "out")


def test_training_curves(tmp_path: Path, legends) -> None:
    stem = tmp_path / "training_curves"
    report.plot_training_curves([write_history(tmp_path / f"h{s}.csv", s) for s in (0, 1)], stem)
    assert_png_and_pdf(stem)
    assert {"train", "validation"} <= legends[0]


def test_captions_cover_every_figure() -> None:
    figures = {name.removeprefix("plot_") for name in dir(report) if name.startswith("plot_")}
    assert set(report.FIGURE_CAPTIONS) == figures
    assert all(caption.endswith(".") for caption in report.FIGURE_CAPTIONS.values())


def test_report_imports_no_model_code() -> None:
    """The report never needs torch models: the module imports no model code of mapex."""
    source = Path(report.__file__).read_text()
    assert "mapex.models" not in source and "import torch" not in source
