"""Tables and figures of mapex.report, from synthetic result files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fixtures_report import (
    ENV,
    LAYERS,
    RATIOS,
    correct_pattern,
    run_record,
    standard_runs,
    write_history,
    write_latency_csv,
    write_response_npz,
    write_run,
    write_samples_csv,
    write_sanity_csv,
    write_sensitivity_csv,
)
from mapex import report
from mapex.io import UserError
from mapex.uncertainty import bootstrap_interval

CAPTIONS = Path(__file__).resolve().parents[1] / "workflow" / "report"
FIGURES = sorted(name.removeprefix("plot_") for name in dir(report) if name.startswith("plot_"))


@pytest.fixture(scope="module")
def run_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return standard_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def runs(run_files: list[Path]) -> pd.DataFrame:
    return report.load_runs(run_files)


@pytest.fixture(scope="module")
def summary(runs: pd.DataFrame) -> pd.DataFrame:
    return report.summary_table(runs)


@pytest.fixture(scope="module")
def comparisons(runs: pd.DataFrame) -> pd.DataFrame:
    return report.comparisons_table(runs)


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures passed to ``_save``, kept open for inspection; nothing is written."""
    seen: list = []
    monkeypatch.setattr(report, "_save", lambda fig, stem: seen.append(fig))
    return seen


@pytest.fixture
def legends(monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """Record the legend labels of every figure saved, then save it as usual."""
    seen: list[set[str]] = []
    save = report._save

    def recording_save(fig, out_stem):
        seen.append(legend_texts(fig))
        save(fig, out_stem)

    monkeypatch.setattr(report, "_save", recording_save)
    return seen


def legend_texts(fig) -> set[str]:
    return {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}


def titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


def row(
    table: pd.DataFrame, criterion: str, ratio: float, task: str = report.POOLED, key: str = "criterion"
) -> pd.Series:
    match = table[(table[key] == criterion) & np.isclose(table["ratio"], ratio) & (table["task"] == task)]
    assert len(match) == 1
    return match.iloc[0]


def assert_png_and_pdf(stem: Path) -> None:
    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
        path = stem.with_name(stem.name + suffix)
        assert path.stat().st_size > 1000, path
        assert path.read_bytes().startswith(magic)
    assert not [p for p in stem.parent.iterdir() if p.name.endswith(".tmp")]


def paired_runs(folder: Path, ours: np.ndarray, theirs: np.ndarray, seeds=(0, 1, 2), task: str = "t0") -> list[Path]:
    """map-ex right on ``ours`` and l1 right on ``theirs`` (image masks), the same masks for every seed."""
    records = [
        run_record(task, name, 0.5, s, 0.0, correct=mask)
        for name, mask in (("map-ex", ours), ("l1", theirs))
        for s in seeds
    ]
    return [write_run(folder, r) for r in records]


# ----------------------------------------------------------------------------- loading


def test_load_runs_one_row_per_file(runs: pd.DataFrame) -> None:
    assert len(runs) == 2 * (3 + 5 * 2 * 3)
    assert set(runs["criterion"]) == {"none", "map-ex", "l1", "bn-scale", "l1-global", "random"}
    assert runs["filters_after"].map(type).eq(dict).all()
    first = runs.iloc[0]
    assert first["correct"].dtype == bool and first["correct"].mean() == pytest.approx(first["top1"])
    assert "predictions" not in runs and "latency_ms_cpu_b64" not in runs


def test_missing_file_names_it(tmp_path: Path, run_files: list[Path]) -> None:
    with pytest.raises(UserError, match=r"r0\.9.s0\.json: file not found"):
        report.load_runs(run_files[:3] + [tmp_path / "l1" / "r0.9" / "s0.json"])


def test_invalid_json_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        report.load_runs([bad])


@pytest.mark.parametrize("field", ["task", "base_criterion", "val_top1", "macs", "filters_after", "env", "predictions"])
def test_missing_field_names_file_and_field(tmp_path: Path, field: str) -> None:
    record = run_record("t0", "l1", 0.3, 0, 0.7)
    del record[field]
    with pytest.raises(UserError, match=rf"s0\.json: missing field '{field}'"):
        report.load_runs([write_run(tmp_path, record)])


@pytest.mark.parametrize("field, value", [("top1", "high"), ("global", 1), ("seed", True), ("predictions", [1, 2])])
def test_wrong_type_names_field(tmp_path: Path, field: str, value: object) -> None:
    path = write_run(tmp_path, {**run_record("t0", "l1", 0.3, 0, 0.7), field: value})
    with pytest.raises(UserError, match=f"field '{field}' has the wrong type"):
        report.load_runs([path])


def test_predictions_must_match_n_and_top1(tmp_path: Path) -> None:
    record = run_record("t0", "l1", 0.3, 0, 0.7)
    short = {**record, "predictions": {"label": [1, 2], "pred": [1, 2]}}
    with pytest.raises(UserError, match=r"'predictions' has 2 labels and 2 predictions for n = 20"):
        report.load_runs([write_run(tmp_path / "a", short)])
    with pytest.raises(UserError, match=r"field 'top1' \(0.9\) disagrees with its predictions \(0.7000 right\)"):
        report.load_runs([write_run(tmp_path / "b", {**record, "top1": 0.9})])
    floats = {**record, "predictions": {"label": [0.5] * 20, "pred": [0] * 20}}
    with pytest.raises(UserError, match=r"'predictions.label' must be a list of integers"):
        report.load_runs([write_run(tmp_path / "c", floats)])


def test_runs_of_a_task_must_predict_the_same_test_images(tmp_path: Path) -> None:
    first = write_run(tmp_path, run_record("t0", "l1", 0.3, 0, 0.7))
    other = run_record("t0", "l1", 0.3, 1, 0.7)
    other["predictions"] = {key: values[::-1] for key, values in other["predictions"].items()}
    with pytest.raises(UserError, match=r"s1\.json: test labels of task 't0' differ from those of .*s0\.json"):
        report.load_runs([first, write_run(tmp_path, other)])
    elsewhere = write_run(tmp_path, {**other, "task": "t1"})
    assert len(report.load_runs([first, elsewhere])) == 2


def test_duplicate_runs_rows_with_two_definitions_and_mixed_archs_are_refused(tmp_path: Path) -> None:
    first = write_run(tmp_path / "a", run_record("t0", "l1", 0.3, 0, 0.7))
    with pytest.raises(UserError, match="several files"):
        report.load_runs([first, write_run(tmp_path / "b", run_record("t0", "l1", 0.3, 0, 0.7))])
    redefined = write_run(tmp_path / "c", run_record("t0", "l1", 0.3, 1, 0.7, global_=True))
    with pytest.raises(UserError, match="row 'l1' has several definitions"):
        report.load_runs([first, redefined])
    other = write_run(tmp_path / "d", run_record("t0", "l1", 0.3, 1, 0.7, arch="vgg16_bn"))
    with pytest.raises(UserError, match="mix architectures"):
        report.load_runs([first, other])


def test_no_files_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no run files"):
        report.load_runs([])


# ----------------------------------------------------------------------------- summary


def test_summary_numbers_by_hand(summary: pd.DataFrame) -> None:
    # map-ex at 0.3: t0 (20 images) 80/85/90 % over seeds, t1 (40 images) 70/75/80 %
    t0, t1, pooled = (row(summary, "map-ex", 0.3, task) for task in ("t0", "t1", "pooled"))
    assert t0["top1_pct_mean"] == pytest.approx(85.0) and t1["top1_pct_mean"] == pytest.approx(75.0)
    assert pooled["top1_pct_mean"] == pytest.approx(80.0)  # tasks weigh equally, not by images (78.3)
    assert (t0["n_seeds"], t0["n_tasks"], pooled["n_tasks"]) == (3, 1, 2)
    assert pooled["params_m_mean"] == pytest.approx(0.7) and pooled["macs_m_mean"] == pytest.approx(35.0)
    assert pooled["macs_removed_pct_mean"] == pytest.approx(30.0)
    assert t0["top1_before_finetune_pct_mean"] == pytest.approx(42.5)
    assert pooled["val_top1_pct_mean"] == pytest.approx(70.0)
    assert pooled["base_criterion"] == "map-ex" and not pooled["global"]
    assert row(summary, "l1-global", 0.3)["global"]


def test_summary_interval_is_the_two_way_bootstrap_of_the_runs(summary: pd.DataFrame) -> None:
    blocks = {
        task: np.stack([correct_pattern(n, acc, s) for s, acc in enumerate(accs)]).astype(float)
        for task, n, accs in (("t0", 20, (0.80, 0.85, 0.90)), ("t1", 40, (0.70, 0.75, 0.80)))
    }
    pooled, t0 = bootstrap_interval(blocks), bootstrap_interval({"t0": blocks["t0"]})
    assert row(summary, "map-ex", 0.3)[["top1_pct_low", "top1_pct_high"]].tolist() == pytest.approx(
        [100 * pooled.low, 100 * pooled.high]
    )
    assert row(summary, "map-ex", 0.3, "t0")[["top1_pct_low", "top1_pct_high"]].tolist() == pytest.approx(
        [100 * t0.low, 100 * t0.high]
    )
    assert 70 < 100 * pooled.low < 80 < 100 * pooled.high < 90


def test_summary_order(summary: pd.DataFrame) -> None:
    assert list(summary["task"].drop_duplicates()) == ["t0", "t1", "pooled"]
    pooled = summary[summary["task"] == "pooled"]
    assert list(zip(pooled["criterion"], pooled["ratio"]))[:3] == [("none", 0.0), ("map-ex", 0.3), ("bn-scale", 0.3)]


def test_summary_markdown(summary: pd.DataFrame, runs: pd.DataFrame) -> None:
    markdown = report.summary_markdown(summary, report.environment_line(runs))
    assert markdown.index("### pooled over 2 task(s)") < markdown.index("### task t0") < markdown.index("### task t1")
    assert "| map-ex    | 0.3     | 3       | 80.0 [" in markdown
    assert "Top-1 (%) [95% CI]" in markdown and "MACs (M)" in markdown and "4000 resamples" in markdown
    assert markdown.rstrip().endswith("Environment: cpu=test-cpu, device=cpu, threads=2, torch=2.5.0")


def test_environment_line_counts_differing_environments(tmp_path: Path) -> None:
    paths = [
        write_run(tmp_path, run_record("t0", "l1", 0.3, s, 0.7, env={**ENV, "threads": t}))
        for s, t in ((0, 2), (1, 2), (2, 8))
    ]
    line = report.environment_line(report.load_runs(paths))
    assert "threads=2, torch=2.5.0 (2 runs); " in line and "threads=8, torch=2.5.0 (1 runs)" in line
    nested = write_run(
        tmp_path / "n", run_record("t0", "l1", 0.3, 0, 0.7, env={"cpu": "x", "versions": {"torch": "2.5"}})
    )
    assert report.environment_line(report.load_runs([nested])) == "Environment: cpu=x, torch=2.5"


def test_markdown_without_tabulate(monkeypatch: pytest.MonkeyPatch, summary: pd.DataFrame) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tabulate" else find_spec(name, *a)
    )
    lines = report.summary_markdown(summary).splitlines()
    start = lines.index("### pooled over 2 task(s)") + 2
    assert lines[start].startswith("| Row | Ratio | Seeds | Top-1 (%) [95% CI] |")
    assert set(lines[start + 1]) <= set("|-")
    assert lines[start + 3].startswith("| map-ex | 0.3 | 3 | 80.0 [")


# ----------------------------------------------------------------------------- comparisons


def test_best_baseline_is_chosen_on_validation_never_on_test(comparisons: pd.DataFrame) -> None:
    # bn-scale beats l1 on test by 5 points, but l1 has the better validation top-1
    best = row(comparisons, "map-ex − best baseline", 0.3, "t0", key="comparison")
    assert best["against"] == "l1"
    assert best["diff_pct_mean"] == pytest.approx(10.0)
    assert best["diff_pct_low"] < 10.0 < best["diff_pct_high"] and best["excludes_zero"]


def test_map_ex_family_rows_are_never_the_best_baseline(tmp_path: Path) -> None:
    records = [
        run_record("t0", name, 0.5, 0, 0.7, base_criterion=base, val_top1=val)
        for name, base, val in (
            ("map-ex", "map-ex", 0.5),
            ("map", "map", 0.9),
            ("map-ex-contrast", "map-ex", 0.9),
            ("l1", "l1", 0.6),
            ("taylor", "taylor", 0.55),
        )
    ]
    runs = report.load_runs([write_run(tmp_path, r) for r in records])
    assert report.best_baseline(runs) == "l1"
    assert report.best_baseline(runs[runs["criterion"].isin(["map-ex", "map"])]) is None


def test_every_row_is_compared_with_random(comparisons: pd.DataFrame) -> None:
    against_random = comparisons[(comparisons["task"] == "pooled") & (comparisons["against"] == "random")]
    assert set(against_random["row"]) == {"map-ex", "l1", "bn-scale", "l1-global"}
    assert row(comparisons, "l1 − random", 0.6, "t1", key="comparison")["diff_pct_mean"] == pytest.approx(20.0)


def test_pairing_by_seed_and_image_separates_rows_whose_own_intervals_overlap(tmp_path: Path) -> None:
    """l1 is right on 100 of 200 images; map-ex on the same ones and 6 more: +3 points on every seed."""
    theirs = np.arange(200) < 100
    ours = np.arange(200) < 106
    runs = report.load_runs(paired_runs(tmp_path, ours, theirs))
    summary = report.summary_table(runs)
    assert row(summary, "map-ex", 0.5)["top1_pct_low"] < row(summary, "l1", 0.5)["top1_pct_high"]
    best = row(report.comparisons_table(runs), "map-ex − best baseline", 0.5, key="comparison")
    assert best["diff_pct_mean"] == pytest.approx(3.0)
    assert 0.0 < best["diff_pct_low"] < 3.0 < best["diff_pct_high"] and best["excludes_zero"]


def test_an_interval_around_zero_is_not_a_difference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ours, theirs = rng.uniform(size=200) < 0.7, rng.uniform(size=200) < 0.7
    table = report.comparisons_table(report.load_runs(paired_runs(tmp_path, ours, theirs)))
    best = row(table, "map-ex − best baseline", 0.5, key="comparison")
    assert best["diff_pct_low"] < 0.0 < best["diff_pct_high"] and not best["excludes_zero"]


def test_pooled_comparison_pairs_each_task_with_its_own_best_baseline(tmp_path: Path) -> None:
    records = [
        run_record(task, name, 0.5, s, acc, val_top1=val)
        for task, vals in (("t0", {"l1": 0.8, "taylor": 0.6}), ("t1", {"l1": 0.6, "taylor": 0.8}))
        for name, acc in (("map-ex", 0.8), ("l1", 0.7), ("taylor", 0.6))
        for s in (0, 1)
        for val in [vals.get(name, 0.5)]
    ]
    table = report.comparisons_table(report.load_runs([write_run(tmp_path, r) for r in records]))
    assert row(table, "map-ex − best baseline", 0.5, "t1", key="comparison")["against"] == "taylor"
    pooled = row(table, "map-ex − best baseline", 0.5, key="comparison")
    assert pooled["against"] == "l1 (t0); taylor (t1)"
    assert pooled["diff_pct_mean"] == pytest.approx((10.0 + 20.0) / 2)


def test_rows_without_a_shared_seed_cannot_be_paired(tmp_path: Path) -> None:
    paths = [write_run(tmp_path, run_record("t0", name, 0.5, s, 0.7)) for name, s in (("map-ex", 0), ("random", 1))]
    with pytest.raises(UserError, match=r"rows 'map-ex' and 'random' share no seed \(\[0\] vs \[1\]\)"):
        report.comparisons_table(report.load_runs(paths))


def test_comparison_sentences(comparisons: pd.DataFrame, tmp_path: Path) -> None:
    text = report.comparison_sentences(comparisons)
    excluded, included = text.split("**Differences whose 95% CI includes 0")
    assert "**Differences whose 95% CI excludes 0 (pooled over 2 task(s)):**" in excluded
    assert "- At ratio 0.3, map-ex − best baseline (l1): +10.0 points [" in excluded
    assert included.strip().endswith("- none.")
    rng = np.random.default_rng(0)
    same = report.comparisons_table(
        report.load_runs(paired_runs(tmp_path, rng.uniform(size=200) < 0.7, rng.uniform(size=200) < 0.7))
    )
    excluded, included = report.comparison_sentences(same, task="t0").split("**Differences whose 95% CI includes 0")
    assert "- none." in excluded and "map-ex − best baseline (l1)" in included


def test_comparisons_markdown(comparisons: pd.DataFrame) -> None:
    markdown = report.comparisons_markdown(comparisons)
    assert markdown.index("### pooled") < markdown.index("### task t0")
    assert "chosen per task and ratio on validation top-1" in markdown
    assert "| 0.3     | map-ex − best baseline | l1        | 3       | 10.0 [" in markdown
    assert markdown.count("| yes ") > 0 and "**Differences whose 95% CI excludes 0" in markdown


# ----------------------------------------------------------------------------- sanity and latency tables


def test_sanity_table_by_hand(tmp_path: Path) -> None:
    table = report.sanity_table([write_sanity_csv(tmp_path / "sanity.csv")])
    assert set(table["task"]) == {"t0", "t1", "pooled"}
    ours, l1 = row(table, "map-ex", 0.3), row(table, "l1", 0.6, "t1")
    assert (ours["top_pct"], ours["bottom_pct"]) == pytest.approx((80.0, 30.0))
    assert (ours["random_mean_pct"], ours["random_min_pct"], ours["random_max_pct"]) == pytest.approx(
        (54.0, 50.0, 58.0)
    )
    assert ours["random_std_pct"] == pytest.approx(np.std([50, 52, 54, 56, 58], ddof=1))
    assert ours["n_random"] == 5 and ours["n_tasks"] == 2
    assert ours["ranks"] and not l1["ranks"]  # l1's top (55 %) is inside the random draws (50-58 %)
    markdown = report.sanity_markdown(table)
    assert "top > max(random) and bottom < min(random)" in markdown and "| no " in markdown


def test_pooled_sanity_averages_each_draw_over_tasks(tmp_path: Path) -> None:
    lines = ["task,criterion,ratio,case,draw,val_top1"]
    for task, shift in (("t0", 0.0), ("t1", 0.1)):
        lines += [
            f"{task},l1,0.5,top,0,{0.6 + shift}",
            f"{task},l1,0.5,bottom,0,{0.2 + shift}",
            f"{task},l1,0.5,random,0,{0.4 + shift}",
            f"{task},l1,0.5,random,1,{0.5 - shift}",
        ]
    path = tmp_path / "sanity.csv"
    path.write_text("\n".join(lines) + "\n")
    pooled = row(report.sanity_table([path]), "l1", 0.5)
    # draw 0: (40 + 50) / 2 = 45, draw 1: (50 + 40) / 2 = 45
    assert (pooled["random_min_pct"], pooled["random_max_pct"], pooled["top_pct"]) == pytest.approx((45, 45, 65))


@pytest.mark.parametrize(
    "bad, message", [("top", r"lacks case \['bottom'\]"), ("middle", r"'case' has values \['middle'\]")]
)
def test_sanity_csv_errors(tmp_path: Path, bad: str, message: str) -> None:
    path = tmp_path / "sanity.csv"
    path.write_text(
        f"task,criterion,ratio,case,draw,val_top1\nt0,l1,0.5,top,0,0.6\nt0,l1,0.5,random,0,0.5\nt0,l1,0.5,{bad},0,0.2\n"
    )
    with pytest.raises(UserError, match=rf"sanity.csv: .*{message}"):
        report.sanity_table([path])


def test_latency_table_one_measurement_per_shape_for_any_batch(tmp_path: Path) -> None:
    table = report.latency_table(write_latency_csv(tmp_path / "latency.csv"), unpruned_macs=50e6)
    assert len(table) == 3
    shared = table[table["shape"] == "w30"].iloc[0]
    assert shared["rows"] == "map-ex, l1, bn-scale, random"
    assert shared["mac_reduction"] == pytest.approx(50 / 35)
    assert (shared["speedup_cpu_b1"], shared["speedup_cpu_b32"]) == pytest.approx((2.0 / 1.5, 100 / 40))
    assert "speedup_cpu_b64" not in table
    markdown = report.latency_markdown(table)
    assert "CPU b32 speedup (×)" in markdown and "| 2.50 " in markdown
    assert markdown.count("map-ex, l1, bn-scale, random") == 2  # ratios 0.3 and 0.6, one line each


def test_latency_table_optional_backend_and_errors(tmp_path: Path) -> None:
    path = write_latency_csv(tmp_path / "latency.csv")
    frame = pd.read_csv(path).assign(latency_ms_ort_b8=2.0, latency_ms_ort_b8_unpruned=5.0)
    frame.to_csv(path, index=False)
    table = report.latency_table(path)
    assert table["speedup_ort_b8"].tolist() == pytest.approx([2.5] * 3)
    assert table["mac_reduction"].isna().all()
    # ONNX Runtime is timed on some shapes only: its empty cells stay empty, the CPU ones may not
    frame.loc[1, ["latency_ms_ort_b8", "latency_ms_ort_b8_unpruned"]] = None
    frame.to_csv(path, index=False)
    timed = report.latency_table(path).set_index("shape")["speedup_ort_b8"]
    assert timed.isna().to_dict() == {"g30": True, "w30": False, "w60": False}
    frame.loc[1, "latency_ms_cpu_b1"] = None
    frame.to_csv(path, index=False)
    with pytest.raises(UserError, match="column 'latency_ms_cpu_b1' has non-numeric value"):
        report.latency_table(path)
    frame.loc[1, "latency_ms_cpu_b1"] = 1.0
    frame.drop(columns="latency_ms_ort_b8_unpruned").to_csv(path, index=False)
    with pytest.raises(UserError, match=r"latency.csv: missing columns \['latency_ms_ort_b8_unpruned'\]"):
        report.latency_table(path)
    pd.concat([frame, frame.iloc[:1]]).to_csv(path, index=False)
    with pytest.raises(UserError, match="shape 'w30' appears more than once"):
        report.latency_table(path)


# ----------------------------------------------------------------------------- figures


def test_accuracy_vs_ratio_has_a_panel_per_task_and_pooled(summary: pd.DataFrame, figures: list) -> None:
    report.plot_accuracy_vs_ratio(summary, Path("unused"))
    fig = figures[0]
    assert titles(fig) == ["pooled over 2 tasks", "task t0", "task t1"]
    assert {"map-ex", "l1", "l1-global", "unpruned (none)"} <= legend_texts(fig)
    # the bars are the intervals: map-ex at 0.3 in the pooled panel spans [low, high]
    pooled = row(summary, "map-ex", 0.3)
    segments = [seg for coll in fig.axes[0].collections for seg in getattr(coll, "get_segments", lambda: [])()]
    spans = {(round(s[0][1], 6), round(s[1][1], 6)) for s in segments if len(s) == 2}
    assert (round(pooled["top1_pct_low"], 6), round(pooled["top1_pct_high"], 6)) in spans


def test_filters_per_layer_shows_the_global_rows_own_counts(runs: pd.DataFrame, figures: list) -> None:
    report.plot_filters_per_layer(runs, Path("unused"))
    assert "every row keeps the same count" not in titles(figures[0])[0]
    assert "l1-global" in legend_texts(figures[0])
    report.plot_filters_per_layer(runs[~runs["global"]], Path("unused"), ratio=0.6)
    assert titles(figures[1])[0].startswith("Filters kept per layer at pruning ratio 0.6")
    assert "every row keeps the same count" in titles(figures[1])[0]
    with pytest.raises(UserError, match="ratio 0.9"):
        report.plot_filters_per_layer(runs, Path("unused"), ratio=0.9)


def test_paired_differences_forest_plot(comparisons: pd.DataFrame, figures: list) -> None:
    report.plot_paired_differences(comparisons, Path("unused"))
    fig = figures[0]
    assert titles(fig)[:3] == ["pooled over 2 tasks", "task t0", "task t1"]
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "r=0.3  map-ex − best baseline" in labels and "r=0.6  l1-global − random" in labels
    zero_lines = [line for line in fig.axes[0].get_lines() if list(line.get_xdata()) == [0.0, 0.0]]
    assert zero_lines


def test_sanity_over_baselines_by_hand(tmp_path: Path) -> None:
    """Baseline a: map-ex's margin 80 − 54 = 26 points; b: 70 − 54 = 16; l1's 55 − 54 = 1 on both."""
    tables = {
        label: report.sanity_table([write_sanity_csv(tmp_path / f"{label}.csv", map_ex_top=top)])
        for label, top in (("a", 0.80), ("b", 0.70))
    }
    over = report.sanity_over_baselines(tables).set_index(["criterion", "measure"])
    margin = over.loc[("map-ex", "margin")]
    assert margin["a"] == pytest.approx(26) and margin["b"] == pytest.approx(16)
    half = 12.706 * (50**0.5) / 2**0.5  # t(0.975, 1 df) × sd / √n
    assert (margin["mean"], margin["low"], margin["high"]) == pytest.approx((21, 21 - half, 21 + half), abs=1e-2)
    assert (margin["positive"], margin["n_baselines"]) == (2, 2)
    assert over.loc[("l1", "margin"), ["mean", "low", "high"]].tolist() == pytest.approx([1, 1, 1])
    assert over.loc[("map-ex", "bottom_gap"), "mean"] == pytest.approx(24)
    assert over.loc[("map-ex", "ranked_ratios"), ["a", "b"]].tolist() == [len(RATIOS)] * 2
    assert over.loc[("l1", "ranked_ratios"), "positive"] == 0
    markdown = " ".join(report.sanity_over_baselines_markdown(over.reset_index()).split())
    assert "| map-ex | 26.0 | 16.0 | 21.0 | [-42.5, +84.5] | 2/2 |" in markdown


def test_sanity_on_one_baseline_has_no_interval(tmp_path: Path) -> None:
    over = report.sanity_over_baselines({"seed 0": report.sanity_table([write_sanity_csv(tmp_path / "s.csv")])})
    assert over["low"].isna().all() and over["high"].isna().all()
    assert "| map-ex | 26.0 | 26.0 | — | 1/1 |" in " ".join(report.sanity_over_baselines_markdown(over).split())


def test_sanity_check_figure(tmp_path: Path, figures: list) -> None:
    report.plot_sanity_check(report.sanity_table([write_sanity_csv(tmp_path / "s.csv")]), Path("unused"))
    fig = figures[0]
    assert len(fig.axes) == 3 * 2 and titles(fig)[0] == "pooled over 2 tasks, ratio 0.3"
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["map-ex\nranks", "l1\nno"]
    assert {"top-scored kept", "bottom-scored kept", "random (min–max)"} <= legend_texts(fig)


def test_layer_sensitivity_heatmap_is_the_mean_drop_over_tasks(tmp_path: Path, figures: list) -> None:
    report.plot_layer_sensitivity([write_sensitivity_csv(tmp_path / "sens.csv")], Path("unused"))
    ax = figures[0].axes[0]
    grid = ax.images[0].get_array()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["map-ex", "l1"]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(LAYERS)
    # map-ex, layer i: t0 drops 1·(i+1) points, t1 two more: mean (i+1) + 1
    assert grid[:, 0].tolist() == pytest.approx([2.0, 3.0, 4.0, 5.0])
    assert grid[:, 1].tolist() == pytest.approx([3.0, 5.0, 7.0, 9.0])


def test_accuracy_vs_macs_draws_the_pooled_rows(summary: pd.DataFrame, figures: list) -> None:
    report.plot_accuracy_vs_macs(summary, Path("unused"))
    assert {"map-ex", "l1", "unpruned (none)"} <= legend_texts(figures[0])
    assert "pooled over 2 tasks" in titles(figures[0])[0]


# ----------------------------------------------------------------------------- the whole report


def test_build_report_writes_every_table_and_figure(tmp_path: Path, run_files: list[Path]) -> None:
    out = tmp_path / "results"
    written = report.build_report(
        run_files,
        out,
        sanity_csvs={"seed 0": [write_sanity_csv(tmp_path / "sanity.csv")]},
        sensitivity_csvs=[write_sensitivity_csv(tmp_path / "sens.csv")],
        latency_csv=write_latency_csv(tmp_path / "lat.csv"),
        samples_csv=write_samples_csv(tmp_path / "samples.csv"),
        response_maps=write_response_npz(tmp_path / "maps.npz"),
        history=[write_history(tmp_path / f"h{s}.csv", s) for s in (0, 1)],
    )
    for name in ("summary", "comparisons", "sanity", "sanity_baselines", "latency"):
        assert (out / "tables" / f"{name}.csv").is_file() and (out / "tables" / f"{name}.md").is_file()
    for stem in FIGURES:
        assert_png_and_pdf(out / "figures" / stem)
    assert sorted(written) == sorted(p for p in out.rglob("*") if p.is_file())
    metrics = json.loads((out / "tables" / "summary.json").read_text())
    assert metrics["summary"]["map-ex/r0.3"]["top1_pct_mean"] == pytest.approx(80.0)
    assert metrics["comparisons"]["r0.3/map-ex vs best baseline"]["diff_pct_mean"] == pytest.approx(10.0)
    latency = pd.read_csv(out / "tables" / "latency.csv")
    assert latency["mac_reduction"].iloc[0] == pytest.approx(2.0)  # unpruned MACs from the "none" runs
    assert pd.read_csv(out / "tables" / "summary.csv")["top1_pct_low"].notna().all()


def test_build_report_with_runs_only_and_another_focus_row(tmp_path: Path) -> None:
    records = [
        run_record("t0", name, 0.5, s, acc, base_criterion=base)
        for name, base, acc in (("map-ex-contrast", "map-ex", 0.8), ("l1", "l1", 0.6), ("random", "random", 0.5))
        for s in (0, 1)
    ]
    paths = [write_run(tmp_path / "runs", r) for r in records]
    out = tmp_path / "results"
    report.build_report(paths, out, focus_row="map-ex-contrast", n_resamples=500)
    assert {p.name for p in (out / "figures").iterdir()} == {
        f"{stem}.{ext}"
        for stem in ("accuracy_vs_ratio", "accuracy_vs_macs", "filters_per_layer", "paired_differences")
        for ext in ("png", "pdf")
    }
    assert not (out / "tables" / "sanity.csv").exists()
    table = pd.read_csv(out / "tables" / "comparisons.csv")
    assert "map-ex-contrast − best baseline" in set(table["comparison"])
    with pytest.raises(UserError, match="focus row 'map-ex' is in no run file"):
        report.build_report(paths, out)


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
    np.savez(
        path,
        images=np.zeros((2, 3, 8, 8)),
        maps=np.zeros((2, 2, 8, 8)),
        boxes=np.zeros((0, 5)),
        panel_titles=np.array(["only one"]),
    )
    with pytest.raises(UserError, match="1 titles"):
        report.plot_response_maps(path, tmp_path / "out")


def test_samples_study(tmp_path: Path, legends) -> None:
    stem = tmp_path / "samples_study"
    report.plot_samples_study(write_samples_csv(tmp_path / "study.csv"), stem)
    assert_png_and_pdf(stem)
    assert {"map-ex", "map"} <= legends[0]


def test_samples_study_without_the_before_fine_tuning_column_has_two_panels(tmp_path: Path, monkeypatch) -> None:
    path = write_samples_csv(tmp_path / "study.csv")
    pd.read_csv(path).drop(columns="top1_before_finetune").to_csv(path, index=False)
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, stem: figures.append(fig))
    report.plot_samples_study(path, tmp_path / "out")
    assert [ax.get_ylabel() for ax in figures[0].axes] == [
        "Spearman ρ with all samples",
        "Test top-1 after pruning\nand fine-tuning (%)",
    ]


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


def test_training_curves_skip_the_epochs_without_validation(tmp_path: Path, monkeypatch) -> None:
    history = tmp_path / "h.csv"
    history.write_text("epoch,train_top1,val_top1\n1,0.2,\n2,0.3,\n3,0.4,0.35\n4,0.5,0.45\n")
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, out_stem: figures.append(fig))
    report.plot_training_curves([history], tmp_path / "curves")
    points = {c.get_label(): list(c.lines[0].get_xdata()) for c in figures[0].axes[0].containers}
    assert points == {"train": [1, 2, 3, 4], "validation": [3, 4]}


def test_every_figure_has_its_one_caption_in_the_workflow_report() -> None:
    """The captions live in one place, ``workflow/report/<figure>.rst`` (Snakemake's report reads them)."""
    assert {path.stem for path in CAPTIONS.glob("*.rst")} == set(FIGURES)
    for stem in FIGURES:
        caption = (CAPTIONS / f"{stem}.rst").read_text().strip()
        assert caption.endswith(".") and "\n\n" not in caption, stem


def test_report_imports_no_model_code() -> None:
    """The report never needs torch models: the module imports no model code of mapex."""
    source = Path(report.__file__).read_text()
    assert "mapex.models" not in source and "import torch" not in source
