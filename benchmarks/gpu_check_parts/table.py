"""The table gpu_check prints and writes: one row per figure, with its target where it has one."""
from __future__ import annotations

TARGET_DR_OVER_PLAIN = 1.05
TARGET_MFU = 0.40
TARGET_TEACHER_SHARE = 0.90


def table_rows(payload: dict) -> list[dict]:
    rows = []

    def row(part, figure, value, unit, target=None, met=None):
        rows.append({"part": part, "figure": figure, "value": value, "unit": unit, "target": target, "met": met})

    train = payload.get("train")
    if isinstance(train, dict) and "runs" in train:
        for model, runs in train["runs"].items():
            for data in ("plain", "dr", "online"):
                r = runs[data]
                label = {"dr": "DR", "plain": "plain", "online": "online distillation"}[data]
                row("1 train", f"{model} {label}: samples/s (data pipeline + step)", r["samples_per_second"], "samples/s")
                row("1 train", f"{model} {label}: data loader share of step time", r["data_loader_share"], "share")
                row("1 train", f"{model} {label}: samples/s, compute only", r["compute_only_samples_per_second"],
                    "samples/s")
                row("1 train", f"{model} {label}: samples/s, data loader only", r["loader_only_samples_per_second"],
                    "samples/s")
            ratio = runs["dr_over_plain"]
            row("1 train", f"{model}: DR / plain step time per sample", ratio, "x",
                f"<= {TARGET_DR_OVER_PLAIN:.2f}x", ratio <= TARGET_DR_OVER_PLAIN)
            row("1 train", f"{model}: DR / plain, compute only", runs["dr_over_plain_compute_only"], "x")
            row("1 train", f"{model}: online / DR step time per sample", runs["online_over_dr"], "x")
            row("1 train", f"{model}: online / DR, compute only", runs["online_over_dr_compute_only"], "x")
    mfu = payload.get("mfu")
    if isinstance(mfu, dict) and "mfu" in mfu:
        for data in ("dr", "plain"):
            label = "DR" if data == "dr" else "plain"
            row("2 MFU", f"{mfu['model']} {label}: model GFLOPs per sample (fwd+bwd)",
                mfu["flops_per_sample"][data] / 1e9, "GFLOP")
            row("2 MFU", f"{mfu['model']} {label} step: MFU (peak {mfu['peak_tflops']:.3g} TFLOP/s)",
                mfu["mfu"][data], "share", f">= {100 * TARGET_MFU:.0f}%", mfu["mfu"][data] >= TARGET_MFU)
            row("2 MFU", f"{mfu['model']} {label} step: MFU, compute only", mfu["mfu_compute_only"][data], "share")
    accum = payload.get("accum")
    if isinstance(accum, dict) and "runs" in accum:
        model, accumulated = accum["model"], accum["accumulated"]
        for name in accum["arms"]:
            r = accum["runs"][name]
            if "out_of_memory" in r:
                continue
            label = f"{model} DR, {r['rows_per_step']} rows in {r['accum_freq']} x {r['micro_batch']}"
            row("3 accum", f"{label}: samples/s, compute only", r["samples_per_second"], "samples/s")
            row("3 accum", f"{label}: GFLOPs per sample (the trainer's count)", r["flops_per_sample"] / 1e9,
                "GFLOP")
            if "max_memory_gib" in r:
                row("3 accum", f"{label}: peak CUDA memory", r["max_memory_gib"], "GiB")
        for name, ratio in accum["accumulated_over"].items():
            row("3 accum", f"{model} DR: {accumulated} / {name} time per seen sample", ratio["time_per_sample"], "x")
            row("3 accum", f"{model} DR: {accumulated} / {name} FLOPs per seen sample", ratio["flops_per_sample"],
                "x")
            if "max_memory" in ratio:
                row("3 accum", f"{model} DR: {accumulated} / {name} peak CUDA memory", ratio["max_memory"], "x")
    teachers = payload.get("teachers")
    if isinstance(teachers, dict) and "by_views" in teachers:
        for views, r in teachers["by_views"].items():
            row("4 teachers", f"2 x {teachers['model']}, {views} views: images/s per GPU", r["images_per_second"],
                "images/s")
            row("4 teachers", f"2 x {teachers['model']}, {views} views: teacher share of wall time",
                r["teacher_share"], "share", f">= {100 * TARGET_TEACHER_SHARE:.0f}%",
                r["teacher_share"] >= TARGET_TEACHER_SHARE)
        for name, r in teachers["gpu_hours"].items():
            row("4 teachers", f"GPU-hours to reinforce {name} ({r['images'] / 1e6:,.1f}M images x "
                f"{r['views_measured']} views)", r["gpu_hours"], "GPU-h")
    dag = payload.get("dag")
    if isinstance(dag, dict) and dag.get("ok"):
        row("5 DAG", f"smoke toy DAG, {dag['mode']} ({dag['jobs']} jobs, {len(dag['checks'])} checks passed)",
            dag["seconds"], "s")
    return rows


def format_value(value: float, unit: str) -> str:
    if unit == "share":
        return f"{100 * value:.1f}%"
    if unit == "x":
        return f"{value:.3f}x"
    if unit == "GFLOP":
        return f"{value:.2f} GFLOP"
    if unit == "GPU-h":
        return f"{value:,.1f} GPU-h"
    if unit == "s":
        return f"{value:.1f} s"
    if unit == "GiB":
        return f"{value:.2f} GiB"
    return f"{value:,.1f} {unit}"


def print_table(payload: dict) -> None:
    rows = payload["table"]
    env = payload["environment"]
    print()
    print(f"gpu_check ({payload['mode']}) on {env['device_name']}, torch {env['torch']}, open_clip "
          f"{env['open_clip']}, {env['cpus']} CPUs, {env['date']}")
    width = max([len(r["figure"]) for r in rows] + [10])
    print(f"{'part':<11} {'figure':<{width}} {'value':>18}  target")
    for r in rows:
        target = "" if r["target"] is None else f"{r['target']}: {'met' if r['met'] else 'NOT met'}"
        print(f"{r['part']:<11} {r['figure']:<{width}} {format_value(r['value'], r['unit']):>18}  {target}")
    for part, error in payload["errors"].items():
        lines = [line for line in error.splitlines() if line.strip()]
        print(f"{part:<11} FAILED: {lines[-1] if lines else '?'}")
