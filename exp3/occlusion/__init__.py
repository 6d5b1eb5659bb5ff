"""The fixed occlusion suite (test split) and S2's occluded train set.

One module per job; docs/occlusion.md says which owns what ("Code layout"), how every draw comes from a
per-image RNG, and how a suite is named by content, built aside and never overwritten. This module holds only
`OcclusionError` and the `exp3-occlusion` console script's `main`; import everything else from its owner.
"""

from __future__ import annotations


class OcclusionError(ValueError):
    """Bad input or a suite that cannot be built or reused; the message is one line with the fix."""


def main(argv: list[str] | None = None) -> int:
    """The `exp3-occlusion` console script: `exp3.occlusion.cli.main` (imported on call, so that importing
    one submodule does not import the whole generator)."""
    from exp3.occlusion.cli import main as cli_main  # lazy: see the docstring

    return cli_main(argv)
