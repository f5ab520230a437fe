"""The markdown table ranking quality methods by pAUC, one section per FR model and FMR."""

from __future__ import annotations

from itertools import groupby


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.4f}"


def _interval(bounds: list[float] | None, signed: bool = False) -> str:
    if bounds is None:
        return ""
    sign = "+" if signed else ""
    return f"[{bounds[0]:{sign}.4f}, {bounds[1]:{sign}.4f}]"


def ranking_markdown(result: dict) -> str:
    protocol = result["protocol"]
    limits = [f"{d:g}" for d in protocol["discard_limits"]]
    lines = [
        f"# Quality methods ranked by EDC pAUC (model {result['model_id'][:12]})",
        "",
        f"{result['images']} images of {result['identities']} identities from "
        f"{result['data']}; {protocol['genuine_comparisons']:,} genuine and "
        f"{protocol['impostor_comparisons']:,} impostor comparisons; pair quality = min.",
        "ISO/IEC 29794-1 EDC: the threshold is fixed once at the FMR over all impostors, "
        "discard steps keep ties together, pAUC by stepwise integration. Lower is better.",
        f"Intervals: {protocol['bootstrap']['resamples']} resamples of the identities "
        "(percentile, the threshold kept fixed); a difference interval above 0 means "
        "ViT-FIQA is better than that method.",
    ]
    key = lambda c: (c["fr_model"], c["fmr"])  # noqa: E731  (curves come grouped so)
    for (fr_model, fmr), group in groupby(result["curves"], key=key):
        curves = sorted(group, key=lambda c: c["pauc"])
        lines += [
            "",
            f"## {fr_model}, FMR {fmr:g} (threshold {curves[0]['threshold']:.4f}, "
            f"starting FNMR {curves[0]['starting_error']:.4f})",
            "",
            "| rank | method | "
            + " | ".join(f"pAUC to {d}" for d in limits)
            + f" | 95% CI (to {limits[-1]}) | minus ViT-FIQA's, 95% CI |",
            "| --- | --- | " + " | ".join("---" for _ in limits) + " | --- | --- |",
        ]
        for rank, curve in enumerate(curves, 1):
            areas = " | ".join(_fmt(curve["pauc_at"][d]) for d in limits)
            ci = _interval(curve.get("pauc_ci"))
            versus = _interval(curve.get("pauc_minus_vit_fiqa_ci"), signed=True)
            lines.append(f"| {rank} | {curve['method']} | {areas} | {ci} | {versus} |")
    lines += [
        "",
        "## CR-FIQA ERC variant (for comparison with published tables only)",
        "",
        "Fractions 0-0.95 of all comparisons discarded by count, the threshold re-estimated "
        "at each step, trapezoid AUC. Not comparable with the EDC pAUC above.",
        "",
        "| FR model | FMR | " + " | ".join(result["methods"]) + " |",
        "| --- | --- | " + " | ".join("---" for _ in result["methods"]) + " |",
    ]
    for (fr_model, fmr), group in groupby(result["erc"], key=key):
        auc = {c["method"]: c["auc"] for c in group}
        cells = " | ".join(_fmt(auc[m]) for m in result["methods"])
        lines.append(f"| {fr_model} | {fmr:g} | {cells} |")
    return "\n".join(lines) + "\n"
