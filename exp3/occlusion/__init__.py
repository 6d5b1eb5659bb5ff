"""The fixed occlusion suite (test split) and S2's occluded train set.

    python -m exp3.occlusion build --data data.yaml --out DIR [--config FILE] [--set mode=random] [--workers 2]
    python -m exp3.occlusion build-train --data data.yaml --out DIR [...]     # S2's occluded train set
    python -m exp3.occlusion build-severity --data data.yaml --out DIR [...]  # one suite per severity level
    python -m exp3.occlusion verify DIR                                      # suite or train set

The generator is a handful of pure functions in the imagecorruptions manner, one module per job:

- `source`: a split read and validated (images hashed, labels parsed) and its fingerprint;
- `geometry`: label boxes in pixels, rectangle masks, the covered fraction of every box;
- `planners`: an occluder *planner* per mode (`PLANNERS`: "object" covers a target fraction of
  every ground-truth box, "random" places random rectangles anywhere), returning integer pixel
  rectangles `(x0, y0, x1, y1)`, half-open; no box may end up more than `MAX_BOX_COVERAGE`
  covered in any mode (planners re-draw, shrink or drop an occluder that would exceed it);
- `fills`: a *fill* per fill type (`FILLS`: "mean", "gray", "noise", "texture"), returning the
  pixels of one rectangle as `(h, w, 3)` uint8 RGB; "texture" is cut from the *background* of
  another image of the split (`TextureDonor`), so an occluder never adds an unlabelled object;
- `codec`: image bytes <-> RGB arrays (`decode_image`, `encode_image`);
- `occlude`: the per-image RNG and `occlude_image`, which draws one fill per image, plans the
  rectangles, paints them and measures the fraction of every box actually covered;
- `identity`: generator version, RNG streams, suite kinds, `algorithm_constants` and the hashed
  identity that names a suite (`occ-`, `occtrain-`, `occsev-<hash12>`), severity specs;
- `worker`: one image task -> files in the build directory + its manifest entry (pool workers);
- `suites`: `build_occlusion_suite`, `build_occluded_train_set`, `build_severity_suites`;
- `verify`: `verify_occlusion_suite`;
- `cli`: the command line above (`main`).

Every random draw comes from a per-image generator
`np.random.default_rng([seed, stream, stable_int(image_id)])`; the stream is `STREAM_TEST_SUITE`
for the test suite and `STREAM_S2_TRAIN` for S2's train set, so the two never share masks.
Nothing touches a global RNG, and the output does not depend on the worker count.

Suites are content-addressed: `occ-<hash12>` (test suite) and `occtrain-<hash12>` (S2 train set)
where the hash covers the generator version, the algorithm constants (`algorithm_constants`), the
parameters and the source fingerprint, so a suite of an older algorithm is never reused. A suite
is built in a temporary sibling directory, its manifest written last, then renamed into place
(exp3.fileio.publish_dir); an existing suite is verified and reused, never overwritten. See
docs/occlusion.md.

This package module itself holds only what every submodule shares (`OcclusionError`) and the
console-script entry point `main` (pyproject: `exp3-occlusion = "exp3.occlusion:main"`); import
everything else from the submodule that owns it.
"""

from __future__ import annotations


class OcclusionError(ValueError):
    """Bad input or a suite that cannot be built or reused; the message is one line with the fix."""


def main(argv: list[str] | None = None) -> int:
    """The `exp3-occlusion` console script: `exp3.occlusion.cli.main` (imported on call, so that importing
    one submodule does not import the whole generator)."""
    from exp3.occlusion.cli import main as cli_main  # lazy: see the docstring

    return cli_main(argv)
