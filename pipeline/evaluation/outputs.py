"""The files an evaluation leaves: the result JSON (the format `fiqa report --eval` reads,
`results`), the EDC plot and a markdown table ranking the methods (`ranking`).
"""

from __future__ import annotations

import json

from pipeline.evaluation.ranking import ranking_markdown
from pipeline.evaluation.results import EdcResult
from pipeline.storage import StorageOptions, filesystem

RESULT_FILE = "result.json"
PLOT_FILE = "edc.png"
RANKING_FILE = "ranking.md"


def write_outputs(result: dict, out: str, storage: StorageOptions | None = None) -> dict:
    """Write result.json, edc.png and ranking.md under `out`; returns their URIs."""
    from pipeline.report.charts import edc_chart  # matplotlib: only where a plot is drawn

    fs, root = filesystem(out, storage)
    fs.makedirs(root, exist_ok=True)
    files = {
        RESULT_FILE: json.dumps(result, indent=1).encode(),
        PLOT_FILE: edc_chart(EdcResult.model_validate(result)),
        RANKING_FILE: ranking_markdown(result).encode(),
    }
    uris = {}
    for name, data in files.items():
        with fs.open(f"{root.rstrip('/')}/{name}", "wb") as f:
            f.write(data)
        uris[name] = f"{out.rstrip('/')}/{name}"
    return uris
