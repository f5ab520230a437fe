"""Evaluating quality methods the way the field does: how well discarding low-quality
comparisons lowers the FR error, against baselines and across FR models.

`plan` holds every setting, `run.evaluate(plan)` measures (the ISO EDC with its pAUC and,
labelled apart, the CR-FIQA ERC variant, `edc`), `outputs.write_outputs` stores the result
JSON (its schema as the report reads it: `results`), the EDC plot and a ranking table.
`verification` holds the verification metrics training reports too. Each module is imported
on its own: this package imports nothing.
"""
