"""The analysis and rendering of a stacking directory, from small hand-written records that follow
stack.json's and curves.jsonl's schema: FLOPs to reach a loss, the per-method summaries (means, SEs
over seeds and over test windows, paired gaps, the methods that cannot be told from the best, FLOPs
saved against scratch and top), adaptive's choices and their ties, the tables, the figure,
report.md, and `laggrow report DIR` on a stacking directory, damaged and old records included.
Every expected number is worked out by hand in the comments beside it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import invoke_ok, one_line_failure, snapshot
from laggrow import formats, store
from laggrow.analysis.stacking import best_methods, choice_rows, flops_to_reach, method_summaries

SEEDS = (0, 1)
METHODS = ("adaptive", "top", "middle", "scratch")

# final test loss per (method, seed)
FINAL = {("adaptive", 0): 1.80, ("adaptive", 1): 1.90, ("top", 0): 2.05, ("top", 1): 2.00,
         ("middle", 0): 1.90, ("middle", 1): 2.30, ("scratch", 0): 2.00, ("scratch", 1): 2.20}
# (train, probe, eval) FLOPs per (method, seed); total = their sum
COMPUTE = {("adaptive", 0): (800.0, 190.0, 10.0), ("adaptive", 1): (800.0, 200.0, 10.0),
           ("top", 0): (900.0, 0.0, 0.0), ("top", 1): (900.0, 0.0, 0.0),
           ("middle", 0): (900.0, 0.0, 0.0), ("middle", 1): (900.0, 0.0, 0.0),
           ("scratch", 0): (1000.0, 0.0, 0.0), ("scratch", 1): (1000.0, 0.0, 0.0)}
TOKENS = {"adaptive": (640, 660), "top": (600, 600), "middle": (600, 600), "scratch": (700, 700)}
STEPS = {"adaptive": 60, "top": 66, "middle": 66, "scratch": 45}
# the final test windows of (method, seed): its final loss + BASE + DELTA[method] * SIGNS (both sum to
# zero, so the windows' mean is the final loss). Against adaptive (delta 0), method m's per-window
# difference, seeds averaged, is its gap + DELTA[m] * SIGNS: SE over 4 windows = DELTA[m] * sd(SIGNS) / 2
# = DELTA[m] * sqrt(4 / 3) / 2 = DELTA[m] / sqrt(3)
BASE = (-0.3, -0.1, 0.1, 0.3)
SIGNS = (1, -1, 1, -1)
DELTA = {"adaptive": 0.0, "top": 0.03, "middle": 0.06, "scratch": 0.0}

# curves: (step, point, flops, eval_loss) per (method, seed), in file order
CURVES = {
    # target 2.00: first at or below it at (800, 1.9), after (600, 2.3): 600 + 200 * 0.3 / 0.4 = 750
    ("adaptive", 0): [(0, "init", 0, 5.0), (10, "train", 100, 3.0), (10, "growth", 100, 3.2),
                      (18, "probe", 300, 2.5), (30, "train", 600, 2.2), (30, "growth", 600, 2.3),
                      (45, "train", 800, 1.9), (60, "train", 1000, 1.8)],
    # target 2.20: hit exactly at (600, 2.2)
    ("adaptive", 1): [(0, "init", 0, 5.0), (10, "train", 100, 3.1), (10, "growth", 100, 3.3),
                      (18, "probe", 300, 2.6), (30, "train", 600, 2.2), (30, "growth", 600, 2.3),
                      (60, "train", 1010, 1.9)],
    # target 2.00: never (ends at 2.05)
    ("top", 0): [(0, "init", 0, 5.0), (10, "growth", 90, 3.0), (30, "growth", 500, 2.4),
                 (60, "train", 900, 2.05)],
    # target 2.20: between (800, 2.4) and (900, 2.0): 800 + 100 * 0.2 / 0.4 = 850
    ("top", 1): [(0, "init", 0, 5.0), (10, "growth", 90, 3.0), (30, "growth", 500, 2.5),
                 (50, "train", 800, 2.4), (60, "train", 900, 2.0)],
    # target 2.00: the null at 700 is skipped: between (500, 2.4) and (900, 1.9): 500 + 400 * 0.4 / 0.5 = 820
    ("middle", 0): [(0, "init", 0, 5.0), (30, "growth", 500, 2.4), (40, "train", 700, None),
                    (60, "train", 900, 1.9)],
    # target 2.20: never
    ("middle", 1): [(0, "init", 0, 5.0), (30, "growth", 500, 2.5), (60, "train", 900, 2.3)],
    ("scratch", 0): [(0, "init", 0, 5.0), (22, "train", 500, 2.5), (45, "train", 1000, 2.0)],
    ("scratch", 1): [(0, "init", 0, 5.0), (22, "train", 500, 2.6), (45, "train", 1000, 2.2)],
}

STAGES = [{"stage": 1, "depth": 1, "start": 0, "end": 10, "steps": 10},
          {"stage": 2, "depth": 2, "start": 10, "end": 30, "steps": 20},
          {"stage": 3, "depth": 3, "start": 30, "end": 60, "steps": 30}]
LAYERS = {(1, "block0"): [0, 0], (1, "zero"): [0, None],
          (2, "block0"): [0, 0, 1], (2, "block1"): [0, 1, 1], (2, "zero"): [0, 1, None]}
# adaptive's growths: seed -> stage -> (chosen, [(name, selection loss at growth, at the probe's end, diverged)])
ADAPTIVE = {
    0: {2: ("block0", [("block0", 2.60, 2.30, False), ("zero", 2.50, 2.40, False)]),
        3: ("block0", [("block1", 2.35, 2.15, False), ("zero", 2.20, None, True), ("block0", 2.40, 2.10, False)])},
    1: {2: ("zero", [("block0", 2.55, 2.45, False), ("zero", 2.65, 2.35, False)]),
        3: ("block1", [("block0", 2.30, 2.20, False), ("block1", 2.28, 2.05, False), ("zero", 2.40, 2.25, False)])},
}
# what top stacking and MIDAS copy at the growth into each stage (from 1 block: block0; from 2: block1 / block0)
FIXED = {2: {"top": "block0", "middle": "block0"}, 3: {"top": "block1", "middle": "block0"}}
# the candidates the probe could not tell from its choice: seed -> stage -> names
TIED = {0: {2: [], 3: ["block1"]}, 1: {2: [], 3: []}}


def _candidate(stage: int, name: str, at_growth: float, probe: float | None, diverged: bool,
               scored: bool) -> dict:
    from_depth = stage - 1
    return {"name": name, "kind": "zero" if name == "zero" else "copy", "layers": LAYERS[(from_depth, name)],
            "selection_loss_at_growth": at_growth if scored else None,
            "selection_probe_loss": probe if scored else None,
            "selection_probe_loss_se": 0.01 if scored and probe is not None else None,
            "score": probe if scored else None, "diverged": diverged}


def _choices(method: str, seed: int) -> list[dict]:
    if method == "scratch":
        return []
    out = []
    for stage in (2, 3):
        start = STAGES[stage - 1]["start"]
        if method == "adaptive":
            chosen, listed = ADAPTIVE[seed][stage]
            candidates = [_candidate(stage, *c, scored=True) for c in listed]
        else:
            chosen = FIXED[stage][method]
            candidates = [_candidate(stage, chosen, 2.5, None, False, scored=False)]
        out.append({"stage": stage, "step": start, "from_depth": stage - 1, "depth": stage, "chosen": chosen,
                    "tied": TIED[seed][stage] if method == "adaptive" else [], **FIXED[stage],
                    "predictor": "loss" if method == "adaptive" else None, "probed": method == "adaptive",
                    "candidates": candidates})
    return out


def _run(method: str, seed: int) -> dict:
    train, probe, evals = COMPUTE[(method, seed)]
    tokens = TOKENS[method][seed]
    final = FINAL[(method, seed)]
    windows = [final + b + DELTA[method] * sign for b, sign in zip(BASE, SIGNS, strict=True)]
    return {"method": method, "seed": seed, "steps": STEPS[method], "depth": 3,
            "final_test_loss": final, "final_test_loss_se": 0.13, "final_test_windows": windows,
            "model_dir": f"models/{method}-seed{seed}", "seconds": 1.5,
            "compute": {"train_flops": train, "probe_flops": probe, "eval_flops": evals,
                        "total_flops": train + probe + evals, "train_tokens": tokens - 40 * (method == "adaptive"),
                        "probe_tokens": 40 * (method == "adaptive"), "total_tokens": tokens},
            "choices": _choices(method, seed)}


def make_record(methods: tuple[str, ...] = METHODS) -> dict:
    model = {"n_layers": 3, "d_model": 32, "n_heads": 4, "d_ff": 64, "vocab_size": 256, "max_seq_len": 16,
             "pos_emb": "learned", "tie_embeddings": False, "dtype": "float32", "ln_eps": 1e-5}
    data = {"corpus": "kjv", "text_field": "text", "tokenizer": "byte", "bpe_vocab_size": 1024, "seq_len": 16,
            "heldout_fraction": 0.02, "eval_batches": 2, "eval_batch_size": 4, "split_seed": 0}
    train = {"steps": 60, "batch_size": 4, "lr": 0.002, "schedule": "cosine", "warmup_steps": 5, "hold_steps": 0,
             "min_lr_ratio": 0.1, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0,
             "dropout": 0.0, "seed": 0, "eval_every": 15, "log_every": 15, "checkpoint_every": 0}
    stack = {"start_layers": 1, "block": 1, "alpha": 1.0, "probe_steps": 8, "candidates": ["blocks", "zero"],
             "methods": list(methods), "optimizer_state": "carry", "predictor": "loss", "seeds": list(SEEDS),
             "probe_eval_every": 0}
    budget = {"flops": 1010.0, "basis": "adaptive's total", "target_step_flops": 20.0,
              "methods": {m: {"steps": STEPS[m], "flops": 1000.0} for m in methods}}
    evaluation = {"rule": "by characters", "selection_documents": 3, "test_documents": 4, "selection_tokens": 5000,
                  "test_tokens": 5100, "windows": 4, "window_tokens": 16, "selection": "choices",
                  "test": "results"}
    return {formats.KEY: formats.FORMAT_VERSION,
            "config": {"run": {"model": model, "data": data, "train": train}, "stack": stack}, "final_steps": 60,
            "stages": STAGES, "budget": budget, "evaluation": evaluation, "seeds": list(SEEDS),
            "methods": list(methods), "runs": [_run(m, s) for m in methods for s in SEEDS]}


def make_rows(methods: tuple[str, ...] = METHODS) -> list[dict]:
    rows = []
    for seed in SEEDS:  # seeds outer, as a stacking run writes them: file order matters only per (method, seed)
        for method in methods:
            for step, point, flops, loss in CURVES[(method, seed)]:
                stage = 1 if method == "scratch" else max(s["stage"] for s in STAGES if s["start"] <= step)
                depth = 3 if method == "scratch" else stage
                rows.append({"method": method, "seed": seed, "stage": stage, "depth": depth, "step": step,
                             "point": point, "test_loss": loss, "test_loss_se": None if loss is None else 0.1,
                             "train_loss": None if point in ("init", "growth") else loss,
                             "tokens": int(flops * 0.64), "flops": flops})
    return rows


def write_dir(directory: Path, record: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / store.STACK_FILE).write_text(json.dumps(make_record() if record is None else record))
    (directory / store.CURVES_FILE).write_text("".join(json.dumps(r) + "\n" for r in make_rows()))
    return directory


# ---- flops_to_reach ------------------------------------------------------------------------------

def test_flops_to_reach_interpolates_in_flops_between_the_points_around_the_first_crossing():
    # 3.0 at 100, 2.0 at 300: loss 2.5 is half-way, at 200; the later dip below is not the first crossing
    assert flops_to_reach([0, 100, 300, 500], [4.0, 3.0, 2.0, 1.0], 2.5) == pytest.approx(200.0)
    # a quarter of the way from 2.0 down to 1.6 -> 1.9: 1000 + 0.25 * 400 = 1100
    assert flops_to_reach([1000, 1400], [2.0, 1.6], 1.9) == pytest.approx(1100.0)


def test_flops_to_reach_an_exact_hit_is_the_points_flops():
    assert flops_to_reach([0, 100, 300], [4.0, 2.2, 2.0], 2.2) == 100.0
    assert flops_to_reach([50, 100], [1.0, 0.5], 2.0) == 50.0  # already there at the first point


def test_flops_to_reach_never_is_none():
    assert flops_to_reach([0, 100, 300], [4.0, 3.0, 2.01], 2.0) is None
    assert flops_to_reach([], [], 2.0) is None


def test_flops_to_reach_skips_missing_losses():
    # the NaN at 200 and the null at 300 are skipped: from (100, 3.0) to (500, 1.0), 2.0 is at 300
    assert flops_to_reach([0, 100, 200, 300, 500], [4.0, 3.0, math.nan, None, 1.0], 2.0) == pytest.approx(300.0)
    assert flops_to_reach([0, 100], [None, math.nan], 2.0) is None


# ---- method_summaries ----------------------------------------------------------------------------

def test_method_summaries_means_standard_errors_and_paired_gaps():
    by = {s["method"]: s for s in method_summaries(make_record(), make_rows())}
    assert list(by) == list(METHODS)
    assert all(s["n_seeds"] == 2 for s in by.values())
    # the SE of two values a, b: sd = |a - b| / sqrt(2), so sd / sqrt(2) = |a - b| / 2
    expected = {"adaptive": (1.85, 0.05), "top": (2.025, 0.025), "middle": (2.10, 0.20), "scratch": (2.10, 0.10)}
    for method, (mean, se) in expected.items():
        assert by[method]["final_loss"] == pytest.approx(mean)
        assert by[method]["final_loss_se"] == pytest.approx(se)
    assert by["adaptive"]["total_flops"] == pytest.approx(1005.0)  # (1000 + 1010) / 2
    assert by["adaptive"]["total_tokens"] == pytest.approx(650.0)  # (640 + 660) / 2
    assert by["scratch"]["total_flops"] == pytest.approx(1000.0)
    assert [by[m]["steps"] for m in METHODS] == [[60], [66], [66], [45]]
    # the test windows' SE of the seeds' mean: adaptive's windows are 1.85 + BASE, sd(BASE) = sqrt(0.2 / 3),
    # over sqrt(4): 0.1291; top's 2.025 + (-0.27, -0.13, 0.13, 0.27): sqrt(0.1796 / 3) / 2 = 0.1223
    assert by["adaptive"]["final_loss_window_se"] == pytest.approx(math.sqrt(0.2 / 3) / 2)
    assert by["top"]["final_loss_window_se"] == pytest.approx(math.sqrt(0.1796 / 3) / 2)
    # best: adaptive (1.85). Paired differences to it, per seed: top 0.25, 0.10; middle 0.10, 0.40;
    # scratch 0.20, 0.30. The SE of two differences is again half their distance. The window SE of
    # the difference is DELTA / sqrt(3); the gap's SE the two in quadrature.
    assert by["adaptive"]["best"] and by["adaptive"]["gap_to_best"] == 0 and by["adaptive"]["gap_se"] is None
    for method, (gap, seed_se) in {"top": (0.175, 0.075), "middle": (0.25, 0.15), "scratch": (0.25, 0.05)}.items():
        eval_se = DELTA[method] / math.sqrt(3)
        assert by[method]["gap_to_best"] == pytest.approx(gap)
        assert by[method]["gap_seed_se"] == pytest.approx(seed_se)
        assert by[method]["gap_eval_se"] == pytest.approx(eval_se, abs=1e-12)
        assert by[method]["gap_se"] == pytest.approx(math.hypot(seed_se, eval_se))
    # within 2 SEs of the best: middle (0.25 <= 2 x 0.154); not top (0.175 > 2 x 0.077), nor scratch (0.25 > 0.1)
    assert {m: by[m]["indistinguishable"] for m in METHODS} == {
        "adaptive": True, "top": False, "middle": True, "scratch": False}


def test_best_methods_names_what_cannot_be_told_from_the_best():
    best = best_methods(make_record())
    assert best["best"] == "adaptive" and best["members"] == ["adaptive", "middle"]
    assert best["seed_noise_measured"] and best["eval_noise_measured"]
    # the medians over middle, top, scratch of the paired window SE and the paired seed SE of a gap
    assert best["noise"]["eval_below_seed_noise"] is True
    assert best["noise"]["seed_se_of_a_difference"] == pytest.approx(0.075)
    # without the windows of one method (a damaged or partial record) its evaluation noise is unknown
    record = make_record()
    record["runs"][2]["final_test_windows"] = []
    top = {c["strategy"]: c for c in best_methods(record)["comparisons"]}["top"]
    assert top["eval_se"] is None and top["seed_se"] == pytest.approx(0.075)


def test_method_summaries_flops_saved_against_scratch_at_its_final_loss():
    by = {s["method"]: s for s in method_summaries(make_record(), make_rows())}
    # adaptive reaches scratch's 2.00 at 750 (seed 0) and 2.20 at 600 (seed 1), of scratch's 1000:
    # saved 0.25 and 0.40, mean 0.325
    assert by["adaptive"]["flops_saved"] == pytest.approx(0.325)
    assert by["adaptive"]["flops_saved_seeds"] == 2
    # top: never on seed 0, 850 on seed 1: 0.15 from one seed
    assert by["top"]["flops_saved"] == pytest.approx(0.15)
    assert by["top"]["flops_saved_seeds"] == 1
    # middle: 820 on seed 0 (the null skipped), never on seed 1
    assert by["middle"]["flops_saved"] == pytest.approx(0.18)
    assert by["middle"]["flops_saved_seeds"] == 1
    assert by["scratch"]["flops_saved"] is None and by["scratch"]["flops_saved_seeds"] is None


def test_adaptive_also_saves_flops_against_top_at_the_same_budget():
    by = {s["method"]: s for s in method_summaries(make_record(), make_rows())}
    # top ends at 2.05 (seed 0) and 2.00 (seed 1), with 900 FLOPs. Adaptive seed 0 reaches 2.05 between its
    # growth row (600, 2.3) and (800, 1.9): 600 + 200 * 0.25 / 0.4 = 725, saved 1 - 725 / 900 = 0.1944; seed 1
    # reaches 2.00 between (600, 2.3) and (1010, 1.9): 600 + 410 * 0.3 / 0.4 = 907.5, past top's 900: -0.0083
    assert by["adaptive"]["flops_saved_vs_top"] == pytest.approx((1 - 725 / 900 + 1 - 907.5 / 900) / 2)
    assert by["adaptive"]["flops_saved_vs_top_seeds"] == 2
    assert all(by[m]["flops_saved_vs_top"] is None for m in ("top", "middle", "scratch"))


def test_method_summaries_without_scratch_and_with_one_seed():
    record = make_record(("adaptive", "top"))
    by = {s["method"]: s for s in method_summaries(record, make_rows(("adaptive", "top")))}
    assert by["adaptive"]["flops_saved"] is None and by["top"]["flops_saved_seeds"] is None
    record["runs"] = [r for r in record["runs"] if r["seed"] == 1]
    by = {s["method"]: s for s in method_summaries(record, [])}
    # one seed: no SE over seeds; top 2.00 against adaptive's 1.90, the windows' SE of the gap alone
    assert by["top"]["final_loss"] == pytest.approx(2.00) and by["top"]["final_loss_se"] is None
    assert by["top"]["gap_to_best"] == pytest.approx(0.10) and by["top"]["gap_seed_se"] is None
    assert by["top"]["gap_se"] == pytest.approx(0.03 / math.sqrt(3))
    assert not best_methods(record)["seed_noise_measured"]


def test_method_summaries_a_seed_that_never_reaches_saves_nothing():
    rows = [r for r in make_rows() if not (r["method"] == "adaptive" and r["test_loss"] is not None
                                           and r["test_loss"] < 2.3)]
    by = {s["method"]: s for s in method_summaries(make_record(), rows)}
    # adaptive's curves now stop above 2.3: neither seed reaches scratch's 2.00 / 2.20
    assert by["adaptive"]["flops_saved"] is None and by["adaptive"]["flops_saved_seeds"] == 0


# ---- choice_rows ---------------------------------------------------------------------------------

def test_choice_rows_agreement_init_choice_and_candidates_by_score():
    rows = choice_rows(make_record())
    assert [(r["stage"], r["seed"]) for r in rows] == [(2, 0), (2, 1), (3, 0), (3, 1)]
    assert [r["tied"] for r in rows] == [[], [], ["block1"], []]
    s2_0, s2_1, s3_0, s3_1 = rows
    # stage 2 seed 0: block0 (probe 2.30) beats zero (2.40); zero had the lower loss right after growth
    assert (s2_0["chosen"], s2_0["agrees_top"], s2_0["agrees_middle"], s2_0["init_choice"]) == \
        ("block0", True, True, "zero")
    assert s2_0["depth"] == 2
    # stage 2 seed 1: zero, which neither fixed rule copies; by init loss block0 (2.55 < 2.65)
    assert (s2_1["chosen"], s2_1["agrees_top"], s2_1["agrees_middle"], s2_1["init_choice"]) == \
        ("zero", False, False, "block0")
    # stage 3 seed 0: block0, MIDAS's and not top's (block1); zero had the lowest loss at growth but
    # diverged, so the init choice is block1 (2.35 < 2.40); by score: block0, block1, zero (none) last
    assert (s3_0["chosen"], s3_0["agrees_top"], s3_0["agrees_middle"], s3_0["init_choice"]) == \
        ("block0", False, True, "block1")
    assert [c["name"] for c in s3_0["candidates"]] == ["block0", "block1", "zero"]
    assert s3_0["candidates"][0] == {"name": "block0", "probe_loss": 2.10, "probe_loss_se": 0.01,
                                     "loss_at_growth": 2.40, "diverged": False}
    assert s3_0["candidates"][2]["probe_loss"] is None and s3_0["candidates"][2]["diverged"]
    # stage 3 seed 1: block1, top's; the init loss agrees (2.28 lowest)
    assert (s3_1["chosen"], s3_1["agrees_top"], s3_1["agrees_middle"], s3_1["init_choice"]) == \
        ("block1", True, False, "block1")
    assert [c["name"] for c in s3_1["candidates"]] == ["block1", "block0", "zero"]


def test_choice_rows_without_adaptive_is_empty():
    assert choice_rows(make_record(("top", "middle", "scratch"))) == []


# ---- rendering -----------------------------------------------------------------------------------

def _text(table) -> str:
    import io

    from rich.console import Console

    console = Console(record=True, width=100, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_tables_show_the_numbers():
    from laggrow.report.tables import stack_choices_table, stack_methods_table

    methods = _text(stack_methods_table(method_summaries(make_record(), make_rows())))
    for expected in ("1.8500 ± 0.0500", "2.0250 ± 0.0250", "+0.1750 ± 0.0770", "+0.2500 ± 0.0500",
                     "32.5% (2/2)", "15% (1/2)", "18% (1/2)", "1e+03", "best", "tied", "worse", "equal FLOPs"):
        assert expected in methods, (expected, methods)
    # the terminal's table fits 80 columns (the tokens are in report.md)
    assert max(len(line.rstrip()) for line in methods.splitlines()) <= 80
    assert max(len(line) for line in methods.splitlines()) <= 100
    choices = _text(stack_choices_table(choice_rows(make_record())))
    for expected in ("block0 2.100, block1 2.150, zero diverged", "block1 2.050, block0 2.200, zero 2.250",
                     "zero 2.350, block0 2.450"):
        assert expected in choices, (expected, choices)
    # stage 3 seed 0: chose block0, tied with block1, which the loss at growth would have chosen; not top's,
    # MIDAS's
    assert ["3", "0", "3", "block0", "block1", "block1", "no", "yes"] in [
        line.split()[:8] for line in choices.splitlines()]
    assert max(len(line) for line in choices.splitlines()) <= 100


def test_plot_stack_writes_a_png(tmp_path):
    from laggrow.report.figures import plot_stack

    path = tmp_path / "stack.png"
    plot_stack(make_record(), make_rows(), path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_render_stack_holds_the_setup_and_both_tables():
    from laggrow.report.stack_markdown import render_stack

    record = make_record()
    text = render_stack(record, method_summaries(record, make_rows()), choice_rows(record), best_methods(record))
    for expected in ("1 -> 2 -> 3", "blocks of 1", "PROP-1", "K = 8", "blocks, zero", "`loss`", "T = 60",
                     "| `top` | 66 | 1000 |", "| `scratch` | 45 | 1000 |", "| 3 | 3 | 30 | 30-59 |",
                     "selection set (3 documents, 5,000 tokens)", "test set (4 documents, 5,100 tokens)",
                     "charged to no method", "every candidate on the selection set at every probe evaluation",
                     "## Methods, compared at equal FLOPs",
                     "| `adaptive` | 60 | 2 | 1.8500 ± 0.0500 | 0.1291 |", "+0.1750 ± 0.0770 | worse |",
                     "+0.2500 ± 0.1539 | tied |", "32.5% (2/2) | 9.31% (2/2) |",
                     "**Cannot be told from the best:** `adaptive` (the best) and `middle`, within the noise of it",
                     "The test windows' SE of a gap (0.0173, median) is below the seeds' (0.0750): the held-out set "
                     "is large enough for these gaps.",
                     "| 3 | 0 | 3 | `block0` | block1 | no | yes | `block1` | "
                     "block0 2.100, block1 2.150, zero diverged |",
                     "Of 4 choices, 1 had a tie, 2 match top stacking, 2 MIDAS and 1 the choice by the loss right "
                     "after growth", "](stack.png)"):
        assert expected in text, (expected, text)
    assert "Seed noise is not measured" not in text


def test_render_stack_with_one_seed_says_seed_noise_is_not_measured():
    from laggrow.report.stack_markdown import render_stack

    record = make_record()
    record["seeds"] = [1]
    record["runs"] = [r for r in record["runs"] if r["seed"] == 1]
    text = render_stack(record, method_summaries(record, make_rows()), choice_rows(record), best_methods(record))
    assert "Seed noise is not measured (one seed)" in text


# ---- the files, and laggrow report DIR -----------------------------------------------------------

def test_write_stack_report_writes_report_and_figure(tmp_path):
    from laggrow.report.writer import write_stack_report

    directory = write_dir(tmp_path / "stack")
    path = write_stack_report(directory)
    assert path == directory / store.REPORT_FILE
    assert "| `scratch` | 45 | 2 | 2.1000 ± 0.1000 | 0.1291 |" in path.read_text()
    assert (directory / store.STACK_PNG).read_bytes()[:4] == b"\x89PNG"


def test_write_stack_report_on_a_directory_without_a_stacking_run(tmp_path):
    from laggrow.errors import LaggrowError
    from laggrow.report.writer import write_stack_report

    with pytest.raises(LaggrowError, match="holds no stacking run"):
        write_stack_report(tmp_path)


def test_laggrow_report_on_a_stacking_directory(tmp_path):
    directory = write_dir(tmp_path / "stack")
    result = invoke_ok("report", directory)
    assert str(directory / store.REPORT_FILE) in result.output
    assert "32.5% (2/2)" in (directory / store.REPORT_FILE).read_text()
    assert (directory / store.STACK_PNG).is_file()


def _break_json(directory: Path) -> None:
    (directory / store.STACK_FILE).write_text('{"format": 1, "runs": [')


def _drop_key(directory: Path) -> None:
    record = make_record()
    del record["stages"]
    (directory / store.STACK_FILE).write_text(json.dumps(record))


def _string_for_number(directory: Path) -> None:
    record = make_record()
    record["runs"][0]["final_test_loss"] = "1.8"
    (directory / store.STACK_FILE).write_text(json.dumps(record))


def _string_in_config(directory: Path) -> None:
    record = make_record()
    record["config"]["stack"]["alpha"] = "one"
    (directory / store.STACK_FILE).write_text(json.dumps(record))


def _old_format(directory: Path) -> None:
    """stack.json as laggrow stack wrote it before the test set and equal budgets: format 1, one
    `final_eval_loss`, no windows, no budget, no evaluation record."""
    record = make_record()
    del record[formats.KEY]
    record["format"] = 1
    del record["budget"], record["evaluation"]
    for run in record["runs"]:
        run["final_eval_loss"] = run.pop("final_test_loss")
        del run["final_test_loss_se"], run["final_test_windows"]
    (directory / store.STACK_FILE).write_text(json.dumps(record))


def _no_curves(directory: Path) -> None:
    (directory / store.CURVES_FILE).unlink()


def _empty_curves(directory: Path) -> None:
    (directory / store.CURVES_FILE).write_text("")


def _curves_without_a_run(directory: Path) -> None:
    rows = [r for r in make_rows() if (r["method"], r["seed"]) != ("middle", 1)]
    (directory / store.CURVES_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _nan_in_curves(directory: Path) -> None:
    rows = make_rows()
    rows[3]["test_loss"] = math.nan  # json.dumps writes the NaN literal, which is not JSON
    (directory / store.CURVES_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _text_for_a_curve_loss(directory: Path) -> None:
    rows = make_rows()
    rows[2]["test_loss"] = "low"
    (directory / store.CURVES_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _unknown_method_run(directory: Path) -> None:
    record = make_record()
    record["runs"][0]["method"] = "sideways"
    (directory / store.STACK_FILE).write_text(json.dumps(record))


@pytest.mark.parametrize("damage, message", [
    (_break_json, "malformed JSON"),
    (_old_format, "written by another version of laggrow stack (record format 1, expected 2"),
    (_drop_key, "missing stages"),
    (_string_for_number, "stack.json: runs[0].final_test_loss: expected a number, got '1.8'"),
    (_string_in_config, "stack.json: config.stack.alpha: expected a number, got 'one'"),
    (_unknown_method_run, "stack.json: runs[0].method: expected one of the methods (adaptive, top, middle, scratch)"),
    (_no_curves, "curves.jsonl: is missing (expected every evaluation of every run in stack.json"),
    (_empty_curves, "curves.jsonl: has no rows (expected every evaluation of every run"),
    (_curves_without_a_run, "curves.jsonl: has no rows of middle seed 1 (expected"),
    (_nan_in_curves, "curves.jsonl line 4: holds NaN, which is not JSON"),
    (_text_for_a_curve_loss, "curves.jsonl: test_loss: expected a number, got 'low' (expected the stacking curves "
                             "(line 3"),
])
def test_laggrow_report_on_a_damaged_stacking_record_is_one_line(tmp_path, damage, message):
    from typer.testing import CliRunner

    from laggrow.cli import app

    directory = write_dir(tmp_path / "stack")
    damage(directory)
    before = snapshot(directory)
    result = CliRunner().invoke(app, ["report", str(directory)])
    line = one_line_failure(result, message)
    assert str(directory) in line
    assert snapshot(directory) == before  # no report.md, no stack.png, no temporary left


def test_a_stacking_run_not_finished_yet_is_named_by_report(tmp_path):
    directory = tmp_path / "stack"
    directory.mkdir()
    (directory / store.STACK_CONFIG_FILE).write_text("{}")  # laggrow stack writes it first, stack.json last
    from typer.testing import CliRunner

    from laggrow.cli import app

    report = ["report", str(directory)]
    one_line_failure(CliRunner().invoke(app, report), "a stacking run not finished yet (no stack.json")
    with store.DirLock(directory, "stacking directory"):  # and while it runs, who holds it
        one_line_failure(CliRunner().invoke(app, report), "in use by another laggrow process")


def test_a_fault_in_rendering_is_a_bug_with_its_traceback_not_a_damaged_record(tmp_path, monkeypatch):
    # the records are checked when read: what rendering raises is laggrow's bug, never the user's file
    from laggrow.report import writer

    def broken(*args, **kwargs):
        raise KeyError("a renderer's own mistake")

    monkeypatch.setattr(writer, "render_stack", broken)
    directory = write_dir(tmp_path / "stack")
    with pytest.raises(KeyError, match="a renderer's own mistake"):
        writer.write_stack_report(directory)
    assert not (directory / store.REPORT_FILE).exists()
