"""The fixed occlusion suite (test split) and S2's occluded train set.

Holds only `OcclusionError` and the console script's `main`; everything else: docs/occlusion.md, "Code layout".
"""

from __future__ import annotations


class OcclusionError(ValueError):
    """Bad input or a suite that cannot be built or reused; the message is one line with the fix."""


def main(argv: list[str] | None = None) -> int:
    """The `exp3-occlusion` console script: `exp3.occlusion.cli.main` (imported on call, so that importing
    one submodule does not import the whole generator)."""
    from exp3.occlusion.cli import main as cli_main  # lazy: see the docstring

    return cli_main(argv)
