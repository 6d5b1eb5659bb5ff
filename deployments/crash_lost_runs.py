"""Create (once) the automation that marks a flow run Crashed when its heartbeats stop (Prefect's documented way to
detect runs whose machine was lost: docs.prefect.io, "Detect zombie flows").

Without it, a session's flow run on a GPU worker whose machine dies stays Running for good, and the fan-out parent
waits on it forever: the other sessions end, the report never comes. With it, the run is Crashed `within` seconds
after its last heartbeat (flow runs send one every PREFECT_FLOWS_HEARTBEAT_FREQUENCY s, 180 by default), the parent
goes on, says the session was stopped, and the same command again resumes it from its last saved epoch.

    python deployments/crash_lost_runs.py [--within-s 540]    # create_pools.sh runs it
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

NAME = "exp3: crash flow runs whose heartbeats stopped"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--within-s", type=int, default=540, help="seconds without a heartbeat (3 x the default 180)")
    args = parser.parse_args()
    heartbeat = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() or 180  # this machine's; set the workers' alike
    if args.within_s < 2 * heartbeat:  # a healthy run between two heartbeats would be Crashed
        raise SystemExit(f"error: --within-s {args.within_s} is under twice the heartbeat interval ({heartbeat} s, "
                         f"PREFECT_FLOWS_HEARTBEAT_FREQUENCY): give {3 * heartbeat} or more, or heartbeat more often")
    try:
        within = Automation.read(name=NAME).trigger.within.total_seconds()
    except ValueError:  # none of that name yet
        within = None
    if within is not None:
        if within != args.within_s:
            raise SystemExit(f"error: automation {NAME!r} exists with {within:g} s, not {args.within_s}: delete it "
                             "(prefect automation delete) and run this again")
        print(f"automation {NAME!r} exists ({within:g} s)")
        return
    Automation(
        name=NAME,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"}, expect={"prefect.flow-run.*"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=args.within_s)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message="no heartbeat: its worker's machine was lost (exp3: run the same "
                                            "command again to resume its session)")],
    ).create()
    print(f"automation {NAME!r} created (Crashed after {args.within_s} s without a heartbeat)")


if __name__ == "__main__":
    main()
