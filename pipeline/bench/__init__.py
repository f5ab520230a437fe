"""The measurements behind `fiqa bench`, one benchmark per module: each figure comes with a bare
baseline measured in the same run, so that it reads as a fraction of what the machine can do."""
