"""The fixed occlusion suite (test split) and S2's occluded train set.

    python -m exp3.occlusion build --data data.yaml --out DIR [--config FILE] [--set mode=random] [--workers 2]
    python -m exp3.occlusion build-train --data data.yaml --out DIR [...]     # S2's occluded train set
    python -m exp3.occlusion build-severity --data data.yaml --out DIR [...]  # one suite per severity level
    python -m exp3.occlusion verify DIR                                      # suite or train set

The generator is a handful of pure functions in the imagecorruptions manner, one module per job
(source, geometry, planners, fills, codec, occlude, identity, worker, suites, verify, cli): the
table in docs/occlusion.md ("Code layout") says which owns what; the same doc says how every draw
comes from a per-image RNG (never a global one, so the output does not depend on the worker count),
how a suite is named after a hash of what it is made of (`occ-`, `occtrain-`, `occsev-<hash12>`)
and how it is built aside, its manifest written last, then renamed into place, never overwritten.

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
