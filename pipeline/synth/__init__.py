"""Synthetic labelled faces: the data every later stage trains, scores and evaluates on.

`types` holds the values a face is made from and `sampling` draws them; `geometry`, `scene`,
`surfaces`, `painting` and `rendering` turn an identity and a variation into an aligned crop;
`degradations` take identity information away from it; `generation` ties them together
deterministically by index, and `dataset` writes generated faces to storage.
"""
