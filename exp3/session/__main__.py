"""`python -m exp3.session --config CFG --model M --session S`: one session end to end (exp3.session.run.main)."""

from exp3.parallel import die_with_starting_process, forked_children_die_with_this_process
from exp3.session.run import main, without_shutdown_collection

if __name__ == "__main__":
    die_with_starting_process()  # the session ends with the flow that started it (exp3.grid.runner)
    forked_children_die_with_this_process()  # and its DataLoader workers with it
    raise SystemExit(without_shutdown_collection(main()))
