"""The data layer: any YOLO data.yaml read and audited (`audit`), the one label parser (`labels`), the embedded
synthetic dataset (`synth`) and the split names (`splits`). `python -m exp3.dataset synth|audit` is `__main__`.
The occluded copies of the data are `exp3.occlusion`'s."""
