"""New items: the content mapper + student against content baselines on an item-cold dataset.

    python scripts/cold_start.py --dataset movielens-item-cold --seeds 2024 1 2 --main_args="--preset movielens"
    python scripts/cold_start.py --dataset tiktok-item-cold --run_dirs RUN_2024 RUN_1 RUN_2

One full ``main.py`` run per seed (or the given run folders), then on the cold test items (ranked
among the cold test items) Recall@20 and NDCG@20 of: the mapper + student, the mapper blended with
content-kNN, the teacher's content path (its fused embedding of the cold items), content-kNN,
popularity (0 for every cold item, so a random tie-break) and random; and, in one ranking of every
item against all held-out test items, both against the warm-only student. Every choice is made on
validation: the mapper's epoch and score weight, the kNN aggregation and the blend's weight on the
validation-cold items (the weight with each item scored by a mapper chosen on the other half); the
scale of new items' scores among warm items, and whether to show them there at all (a gain over
the warm-only ranking above one standard error), on the whole validation split. Mean ± sd over
seeds; each key comparison's relative difference with an interval over seeds and users
(utility.stats.two_way_comparison; docs/cold-start.md).

    python scripts/cold_start.py --combine runs/A/cold-start.json runs/B/cold-start.json ...

puts the summaries of several item splits of one dataset together: the item split is then the
replicate (which items are new varies with the draw), each comparison's relative difference is
averaged over the splits, with a t interval over them (splits − 1 degrees of freedom).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utility.cold_start import (KS, ColdBlend, blend_weight_scores, choose_scale, cold_evaluator,  # noqa: E402
                                cold_scores, content_knn_scores, evaluate_per_user, fit_serving_mapper,
                                items_without_training, masked_scores, popularity_tie_break_scores, random_scores,
                                read_cold_items, score_ratio)
from utility.errors import UserError  # noqa: E402
from utility.evaluate import RankingEvaluator, dot_scores  # noqa: E402
from utility.load_data import load_dataset  # noqa: E402
from utility.recommend import Recommender, read_config  # noqa: E402
from utility.run_io import write_json  # noqa: E402
from utility.stats import seed_interval, summarise, two_way_comparison  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("recall@20", "ndcg@20")
BLEND = "mapper + content-kNN + student"
COLD_METHODS = (BLEND, "mapper + student", "teacher content path", "content-kNN", "popularity (random tie-break)",
                "random")
MIXED_METHODS = (BLEND, "mapper + student", "mapper + student, always promoted", "mapper + student, scale 1",
                 "student, own rows for new items", "student, new items -inf", "teacher")
# (ranking, control, treatment): the comparisons the acceptance target names, and what the kNN term adds
COMPARISONS = (("cold", "content-kNN", "mapper + student"), ("cold", "teacher content path", "mapper + student"),
               ("mixed", "student, own rows for new items", "mapper + student"),
               ("mixed", "student, new items -inf", "mapper + student"),
               ("cold", "content-kNN", BLEND), ("cold", "teacher content path", BLEND),
               ("cold", "mapper + student", BLEND),
               ("mixed", "student, own rows for new items", BLEND))
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75)   # the kNN term's weight in the blend; 0 is the mapper alone


def train_run(dataset, data_path, seed, threads, main_args):
    """One full main.py run in a subprocess; returns its run folder."""
    with tempfile.TemporaryDirectory() as tmp:
        results = os.path.join(tmp, "results.json")
        command = [sys.executable, os.path.join(ROOT, "main.py"), "--dataset", dataset, "--data_path", data_path,
                   "--seed", str(seed), "--threads", str(threads), "--no_plot", "--results_json", results,
                   *shlex.split(main_args)]
        print("$ " + " ".join(shlex.quote(c) for c in command[1:]), flush=True)
        code = subprocess.call(command, cwd=ROOT)
        if code != 0:
            raise SystemExit(f"error: main.py exited with {code} (seed {seed})")
        with open(results, encoding="utf-8") as f:
            return json.load(f)["run_dir"]


def evaluate_run(run_dir, seed, score_weights, serving_scales, device):
    """Every method on the cold test items and in the mixed ranking, choices made on validation.
    The teacher is the run's stage-1 best (teacher.pt), the student its stage-2 best (student.pt)."""
    config = read_config(run_dir)
    ds = load_dataset(os.path.join(config["data_path"], config["dataset"]), name=config["dataset"])
    cold = read_cold_items(ds.path, ds.n_items)
    teacher, student = (Recommender.load(run_dir, model, device) for model in ("teacher", "student"))
    teacher_user, teacher_item, student_user, student_item = (teacher.user_emb, teacher.item_emb,
                                                              student.user_emb, student.item_emb)
    new_items = items_without_training(ds.train)
    fitted = fit_serving_mapper(ds, student_user, student_item, seed, score_weights, serving_scales, device)
    mapper, content = fitted.mapper, torch.from_numpy(fitted.scaler.transform(ds.modality_feats)).to(device)
    evals = {split: cold_evaluator(getattr(ds, split), cold[split], KS, device) for split in ("val", "test")}
    cold_content = {split: content[torch.as_tensor(cold[split], device=device)] for split in evals}

    def mapper_score_fn(mapper, split):
        with torch.no_grad():
            return dot_scores(student_user, mapper(cold_content[split]))

    print(f"  mapper: score weight {fitted.info['score_weight']:g} (val recall@20 "
          + ", ".join(f"{w}: {v:.4f}" for w, v in fitted.info["val"].items())
          + f"), best epoch {fitted.info['epoch']}; scale {fitted.scale:g}, "
          + ("promoted" if fitted.promote else "not promoted") + f" (gain {fitted.info['gain']:+.4f}, "
          f"se {fitted.info['gain_se']:.4f})", flush=True)
    knn_val = {how: evals["val"](content_knn_scores(ds.train, content.cpu(), cold["val"], how))["recall@20"]
               for how in ("mean", "max")}
    how = max(knn_val, key=knn_val.get)
    knn = {split: content_knn_scores(ds.train, content.cpu(), items, how)
           for split, items in (("val", cold["val"]), ("test", cold["test"]), ("new", new_items))}
    # the blend of the mapper with kNN: its unit ratio on the validation-cold items; its weight there too,
    # each item scored by a mapper not chosen on it (the served mapper's own score there is flattered)
    ratio = score_ratio(mapper_score_fn(mapper, "val"), knn["val"], evals["val"].users)
    in_sample = {w: evals["val"](ColdBlend(w, ratio).cold_scores(mapper_score_fn(mapper, "val"), knn["val"]))
                 ["recall@20"] for w in BLEND_WEIGHTS}
    blend_val = blend_weight_scores(ds, student_user, student_item, content, cold["val"],
                                    np.setdiff1d(np.arange(ds.n_items), new_items), how,
                                    fitted.info["score_weight"], seed, BLEND_WEIGHTS, device)
    blend = ColdBlend(max(BLEND_WEIGHTS, key=blend_val.get), ratio)

    def cold_methods(split):
        return {BLEND: blend.cold_scores(mapper_score_fn(mapper, split), knn[split]),
                "mapper + student": mapper_score_fn(mapper, split),
                "teacher content path": cold_scores(teacher_user, teacher_item, cold[split]),
                "content-kNN": knn[split],
                "popularity (random tie-break)": popularity_tie_break_scores(ds.train, cold[split], seed),
                "random": random_scores(len(cold[split]), seed)}

    def served(chosen, scale):
        return chosen.mixed_scores(student_user, student_item, mapper, content, new_items, knn["new"], scale)

    # the blend's scale among warm items, and whether to show new items there: on the whole validation split
    warm_only = masked_scores(student_user, student_item, new_items)
    blend_choice = choose_scale(RankingEvaluator(ds.val, [ds.train], KS, device), lambda s: served(blend, s),
                                warm_only, serving_scales)
    print(f"  content-kNN ({how}) val recall@20 {knn_val[how]:.4f}; blend weight {blend.weight:g}, val recall@20 "
          f"{blend_val[blend.weight]:.4f}; scale {blend_choice['scale']:g}, "
          + ("promoted" if blend_choice["promote"] else "not promoted"), flush=True)
    result = {"run_dir": run_dir, "seed": seed,
              "choices": {"mapper_score_weight": fitted.info["score_weight"], "mapper_epoch": fitted.info["epoch"],
                          "mapper_val": fitted.info["val"],
                          "serving_scale": fitted.scale, "serving_scale_val": fitted.info["scale_val"],
                          "promoted": fitted.promote, "gain": fitted.info["gain"], "gain_se": fitted.info["gain_se"],
                          "knn": how, "knn_val": knn_val,
                          "blend_weight": blend.weight, "blend_ratio": ratio,
                          "blend_val": {str(w): v for w, v in blend_val.items()},
                          "blend_val_in_sample": {str(w): v for w, v in in_sample.items()},
                          "blend_scale": blend_choice["scale"],
                          "blend_scale_val": blend_choice["val"], "blend_promoted": blend_choice["promote"]},
              "val": {m: evals["val"](fn) for m, fn in cold_methods("val").items()},
              "cold": {m: evaluate_per_user(evals["test"], fn, METRICS) for m, fn in cold_methods("test").items()}}
    mixed_eval = RankingEvaluator(ds.test, [ds.train, ds.val], KS, device)
    mixed = {BLEND: served(blend, blend_choice["scale"]) if blend_choice["promote"] else warm_only,
             "mapper + student": served(ColdBlend(0.0, ratio), fitted.scale) if fitted.promote else warm_only,
             "mapper + student, always promoted": served(ColdBlend(0.0, ratio), fitted.scale),
             "mapper + student, scale 1": served(ColdBlend(0.0, ratio), 1.0),
             "student, own rows for new items": dot_scores(student_user, student_item),
             "student, new items -inf": masked_scores(student_user, student_item, new_items),
             "teacher": dot_scores(teacher_user, teacher_item)}
    result["mixed"] = {m: evaluate_per_user(mixed_eval, fn, METRICS) for m, fn in mixed.items()}
    return result


def summary(per_seed):
    """{ranking: {method: {metric: (mean, sd)}}} over seeds, and the key comparisons per seed."""
    table = {}
    for ranking, methods in (("cold", COLD_METHODS), ("mixed", MIXED_METHODS)):
        table[ranking] = {m: {k: summarise([r[ranking][m]["mean"][k] for r in per_seed]) for k in METRICS}
                          for m in methods}
    comparisons = []
    for ranking, control, treatment in COMPARISONS:
        users = [r[ranking][control]["users"] for r in per_seed]
        if not all(np.array_equal(users[0], u) for u in users):
            raise ValueError(f"{ranking} ranking: the seeds were evaluated on different users")
        for metric in METRICS:
            a, b = (np.stack([r[ranking][m][metric] for r in per_seed]) for m in (control, treatment))
            comparisons.append(dict(ranking=ranking, control=control, treatment=treatment, metric=metric,
                                    **two_way_comparison(a, b)))
    return table, comparisons


TITLES = {"cold": "cold test items, ranked among the cold test items",
          "mixed": "every item, against all held-out test items"}


def report_lines(table, comparisons, legend, detail):
    """The tables and the comparisons as text; ``detail(c)`` is what follows a comparison's interval."""
    lines = []
    for ranking, methods in table.items():
        lines.append(f"\n{TITLES.get(ranking, ranking)}\n| method | Recall@20 | NDCG@20 |\n|---|---:|---:|")
        for method, values in methods.items():
            cells = [f"{m:.4f} ± {sd:.4f}" if sd is not None else f"{m:.4f}" for m, sd in values.values()]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("\ntreatment vs control: " + legend)
    for c in comparisons:
        head = f"  {c['ranking']}: {c['treatment']} vs {c['control']}, {c['metric']}: "
        if c["rel_diff"] is None:
            lines.append(head + c["verdict"])
            continue
        lo, hi = c["interval"]
        lines.append(head + f"{c['rel_diff']:+.1f}% [{lo:+.1f}, {hi:+.1f}]{detail(c)}; {c['verdict']}")
    return lines


def format_report(dataset, seeds, table, comparisons):
    def detail(c):
        plo, phi = c["percentile_interval"]
        return f" ([{plo:+.1f}, {phi:+.1f}]); per seed " + ", ".join(f"{x:+.1f}%" for x in c["per_seed_rel_diff"])
    return "\n".join([f"{dataset}: mean ± sd over seeds {' '.join(map(str, seeds))}"] + report_lines(
        table, comparisons, "relative difference of means, 95 % interval over seeds and users (t; two-way "
        "bootstrap percentile), per seed", detail))


def combine_splits(summaries, names):
    """The summaries (cold-start.json contents) of several item splits, put together with the split as
    the replicate: (table, comparisons). table: {ranking: {method: {metric: (mean, sd)}}} of the splits'
    means; comparisons: per comparison of the first summary, its relative difference in every split,
    their mean and sd, the t interval over splits and the verdict."""
    if len(summaries) < 2:
        raise UserError("--combine: give the summaries of at least two item splits")
    first = summaries[0]
    keys = [(c["ranking"], c["control"], c["treatment"], c["metric"]) for c in first["comparisons"]]
    table = {}
    for ranking, methods in first["table"].items():
        table[ranking] = {}
        for method, metrics in methods.items():
            for summary, name in zip(summaries, names):
                if method not in summary["table"].get(ranking, {}):
                    raise UserError(f"{name}: no {ranking} result for {method!r}, which {names[0]} has")
            table[ranking][method] = {metric: summarise([s["table"][ranking][method][metric][0] for s in summaries])
                                      for metric in metrics}
    comparisons = []
    for key in keys:
        per_split = []
        for summary, name in zip(summaries, names):
            match = [c for c in summary["comparisons"]
                     if (c["ranking"], c["control"], c["treatment"], c["metric"]) == key]
            if not match:
                raise UserError(f"{name}: no comparison {key[2]!r} vs {key[1]!r} ({key[0]}, {key[3]}), "
                                f"which {names[0]} has")
            per_split.append(match[0]["rel_diff"])
        row = dict(zip(("ranking", "control", "treatment", "metric"), key), per_split_rel_diff=per_split)
        if any(x is None for x in per_split):
            comparisons.append(dict(row, rel_diff=None, verdict="no relative difference in some split"))
            continue
        over = seed_interval(per_split)
        lo, hi = over["interval"]
        comparisons.append(dict(row, rel_diff=over["mean"], sd=over["sd"], interval=(lo, hi), df=over["n"] - 1,
                                verdict="B above A" if lo > 0 else "B below A" if hi < 0 else
                                "no measurable difference"))
    return table, comparisons


def format_combined(names, table, comparisons):
    def detail(c):
        return "; per split " + ", ".join(f"{x:+.1f}%" for x in c["per_split_rel_diff"])
    return "\n".join([f"mean ± sd over {len(names)} item splits: " + " ".join(names)] + report_lines(
        table, comparisons, "mean over splits of the relative difference, 95 % t interval over splits", detail))


def combine_main(paths, out):
    summaries = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                summary = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot be read as a cold-start summary ({e})") from None
        if not isinstance(summary, dict) or not {"table", "comparisons"} <= set(summary):
            raise UserError(f"{path}: not a cold-start summary (no 'table' and 'comparisons'; "
                            f"scripts/cold_start.py --out writes one)")
        summaries.append(summary)
    names = [s.get("dataset") or os.path.basename(os.path.dirname(p)) for s, p in zip(summaries, paths)]
    table, comparisons = combine_splits(summaries, names)
    print(format_combined(names, table, comparisons))
    if out:
        write_json(dict(splits=names, table=table, comparisons=comparisons), out)
        print(f"wrote {out}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="an item-cold dataset folder under --data_path")
    p.add_argument("--data_path", default="data")
    p.add_argument("--seeds", type=int, nargs="+", default=[2024, 1, 2])
    p.add_argument("--run_dirs", nargs="+", default=None,
                   help="evaluate these finished run folders (one per seed, in --seeds order) instead of training")
    p.add_argument("--main_args", default="", help="further main.py flags, e.g. \"--preset movielens\"")
    p.add_argument("--score_weights", type=float, nargs="+", default=[0.0, 1.0, 10.0],
                   help="the mapper's score-alignment weights tried; chosen on validation")
    p.add_argument("--serving_scales", type=float, nargs="+", default=[1.0, 0.5, 1.25, 1.5, 1.75, 2.0, 3.0],
                   help="scales of the mapper's vectors in a ranking with warm items; chosen on validation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON summary (default: runs/<dataset>/cold-start.json; with "
                                               "--combine none)")
    p.add_argument("--combine", nargs="+", metavar="JSON", default=None,
                   help="put the summaries of several item splits together (the split as the replicate)")
    args = p.parse_args(argv)
    if args.combine:
        try:
            return combine_main(args.combine, args.out)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
    if not args.dataset:
        p.error("--dataset is required (or --combine)")
    if args.run_dirs is not None and len(args.run_dirs) != len(args.seeds):
        p.error(f"--run_dirs: {len(args.run_dirs)} folders for {len(args.seeds)} seeds")
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    try:
        per_seed = []
        for i, seed in enumerate(args.seeds):
            run_dir = (args.run_dirs[i] if args.run_dirs else
                       train_run(args.dataset, args.data_path, seed, args.threads, args.main_args))
            print(f"seed {seed}: {run_dir}", flush=True)
            per_seed.append(evaluate_run(run_dir, seed, args.score_weights, args.serving_scales, device))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    table, comparisons = summary(per_seed)
    print(format_report(args.dataset, args.seeds, table, comparisons))
    out = args.out or os.path.join(ROOT, "runs", args.dataset, "cold-start.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_json(dict(dataset=args.dataset, seeds=args.seeds, table=table, comparisons=comparisons,
                    runs=[{k: v for k, v in r.items() if k in ("run_dir", "seed", "choices", "val")} for r in per_seed],
                    per_user={r["seed"]: {ranking: {m: {k: np.asarray(v).tolist() for k, v in res.items() if k != "mean"}
                                                    for m, res in r[ranking].items()} for ranking in ("cold", "mixed")}
                              for r in per_seed}), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
