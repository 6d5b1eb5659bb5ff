"""`python -m exp3.occlusion`: run `exp3.occlusion.cli.main`.

Run from the importable module, so the pool pickles `exp3.occlusion.*` functions, and workers are
told there is no `__main__` to re-import (re-running this module in each worker is useless and
makes runpy warn).
"""

import sys

if __name__ == "__main__":
    sys.modules["__main__"].__spec__ = None
    del sys.modules["__main__"].__file__
    from exp3.occlusion.cli import main

    raise SystemExit(main())
