"""`python -m exp3.session --config CFG --model M --session S`: one session end to end (exp3.session.run.main)."""

import gc

from exp3.parallel import die_with_starting_process, forked_children_die_with_this_process
from exp3.session.run import main

if __name__ == "__main__":
    die_with_starting_process()  # the session ends with the flow that started it (exp3.grid.runner)
    forked_children_die_with_this_process()  # and its DataLoader workers with it
    code = main()
    gc.freeze()  # exit without CPython's slow shutdown collection (BENCHMARKS.md, "no shutdown collection")
    raise SystemExit(code)
