"""The live planner: heartbeats, windows, forecasts and router loads from NATS into the planner core;
plans to Redis and NATS; commands to node-agents over gRPC.

Only the holder of the planner lease in Redis decides; a standby keeps its view warm from the same
streams and takes over when the lease lapses, restoring the stored plan first so it continues the
course rather than starting a new one. With `cloud.actuator` set (local, k8s), the leader also acts on
its plans' VM counts (opscale.runtime.live.vm_actuation): at once for each plan it publishes whose VM
counts differ from those last ensured, on taking the lease for the plan it continues, and every
`cloud.poll_s` for the current plan, after reading the cloud's events; the policy is then told the
account's GPU quotas, as in the simulator. Wiring only: the logic is opscale.services.planner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from opscale.model import Plan
from opscale.perf import LatencyModels, default_catalog, load_profiles
from opscale.planning import build_planning_stack
from opscale.runtime.live.bus import durable_name
from opscale.runtime.live.grpc_glue import AgentCallError, NodeAgentClient
from opscale.runtime.live.host import CoreHost
from opscale.runtime.live.settings import PlannerSettings, SettingsError
from opscale.runtime.live.store import MAX_LEASE_FLOOR
from opscale.runtime.live.vm_actuation import VmActuation, build_actuator
from opscale.services import subjects
from opscale.services.actions import Action, Publish, SendCommand
from opscale.services.events import ApplyCommand, PlanPublished
from opscale.services.planner import PlannerCore

from opscale_services.common import LiveProcess

log = logging.getLogger(__name__)


async def run(settings: PlannerSettings, stop: asyncio.Event | None = None,
              on_start: Callable[[LiveProcess], None] | None = None) -> None:
    settings.grpc_tls.require("planner")  # before connecting anything: no plan is made that cannot be sent
    cloud = settings.cloud
    quotas, actuator = None, None
    if cloud.actuator != "none":  # an elastic fleet: the policy plans up to the account's quotas
        # a local "VM" joins this planner's stack: its NATS, Redis and namespace
        joins = {"OPSCALE_NATS_URL": settings.nats_url, "OPSCALE_REDIS_URL": settings.redis_url,
                 "OPSCALE_NAMESPACE": settings.namespace}
        try:
            quotas = cloud.gpu_quotas()
            actuator = build_actuator(cloud, joins)  # connects to nothing yet
        except (ValueError, RuntimeError) as exc:
            raise SettingsError(f"invalid planner settings: planner.cloud: {exc}") from None
    async with LiveProcess("planner", settings) as p:
        profiles = load_profiles(settings.profiles_dir) if settings.profiles_dir else None
        stack = build_planning_stack(settings.deployments, settings.tier_specs(), settings.policy,
                                     settings.policy_params, catalog=default_catalog(),
                                     latency=LatencyModels(profiles), engine=settings.engine)
        core = PlannerCore(stack.policy, settings.deployments, settings.core, gpu_quotas=quotas)
        clients: dict[str, NodeAgentClient] = {}
        sending: set[asyncio.Task[None]] = set()

        async def close_clients() -> None:
            for task in list(sending):
                task.cancel()
            for client in clients.values():
                await client.close()
        p.on_exit(close_clients)
        leader = False
        loop = asyncio.get_running_loop()
        # The lease is surely ours until this loop time (the TTL from before the last call that confirmed
        # it): a leader cut off from Redis stops deciding when it may have lapsed, not when it learns so.
        held_until = 0.0

        def leading() -> bool:
            return leader and loop.time() < held_until

        actuation: VmActuation | None = None
        if actuator is not None:
            actuation = VmActuation(actuator, p.clock, leading, cloud.call_timeout_s, cloud.initial())
            p.on_exit(actuation.close)  # after the loops have stopped (exits run in reverse order)
            log.info("planner %s acts on its plans' VM counts through the %s actuator", settings.holder_id,
                     cloud.actuator)

        def act_on(plan: Plan, every_cell: bool = False) -> None:
            """Converge to `plan`'s VMs beside the loop that published it (an actuator call may be slow):
            the cells whose count changed, or `every_cell` (a new leader: others may have acted meanwhile)."""
            if actuation is None:
                return
            task = asyncio.create_task(actuation.converge(plan) if every_cell else actuation.apply(plan))
            sending.add(task)
            task.add_done_callback(sending.discard)

        async def send(address: str, command: ApplyCommand) -> None:
            client = clients.get(address)
            if client is None:
                client = clients[address] = NodeAgentClient(address, settings.agent_call_timeout_s, tls=settings.grpc_tls,
                                                             tracer_provider=p.tracer_provider)
            try:
                accepted, epoch, reason, _ = await client.apply(command)
                log.info("agent %s epoch %d: %s (%s)", command.agent_id, command.epoch,
                         "accepted" if accepted else "refused", reason)
            except AgentCallError as exc:
                # level-triggered: the agent's next heartbeat still shows the old epoch, so it is re-sent
                log.warning("agent %s unreachable: %s", command.agent_id, exc)

        async def on_action(action: Action) -> bool:
            if isinstance(action, Publish) and isinstance(action.event, PlanPublished):
                act_on(action.event.plan)
                return False  # published as well
            if not isinstance(action, SendCommand) or not isinstance(action.command, ApplyCommand):
                return False
            address = core.agent_address(action.agent_id)
            if address is None:
                log.warning("no address known for agent %s; command deferred", action.agent_id)
                return True
            task = asyncio.create_task(send(address, action.command))
            sending.add(task)
            task.add_done_callback(sending.discard)
            return True

        host = CoreHost(core, p.bus, p.store, p.clock, on_action=on_action)
        p.core = core

        async def lease() -> None:
            nonlocal leader, held_until
            asked_at = loop.time()
            if leader:
                leader = await p.store.renew_lease(settings.lease_name, settings.holder_id, settings.lease_ttl_s)
                if leader:
                    held_until = asked_at + settings.lease_ttl_s
                    return
                # Lost (another holder, or a Redis restarted without it): try to take it again at once
                # rather than one renewal later, so a Redis restart does not leave the fleet leaderless
                log.warning("planner %s lost the lease; trying to take it again", settings.holder_id)
            # above what the agents follow, even when Redis lost the lease's counter
            token = await p.store.acquire_lease(settings.lease_name, settings.holder_id, settings.lease_ttl_s,
                                                above=min(core.newest_agent_token(), MAX_LEASE_FLOOR))
            if token:
                held_until = asked_at + settings.lease_ttl_s
                stored = await p.store.load_plan()
                if stored is not None and stored.epoch > core.plan.epoch:
                    core.restore(stored)
                core.lead(token)  # its commands carry the new generation; agents refuse the old one's
                leader = True
                log.info("planner %s holds the lease (fencing token %d); continuing from epoch %d",
                         settings.holder_id, token, core.plan.epoch)
                act_on(core.plan, every_cell=True)  # the VMs of the plan it continues (level-triggered)

        async def release() -> None:
            if leader:
                await p.store.release_lease(settings.lease_name, settings.holder_id)
        p.on_exit(release)

        async def tick() -> None:
            if leading():
                await host.tick()

        ns = settings.namespace or "default"
        for subject, name, deliver in (
                (subjects.HEARTBEATS_ALL, "heartbeats", "last_per_subject"),
                (subjects.WINDOWS_ALL, "windows", "new"),
                (subjects.FORECASTS_ALL, "forecasts", "last_per_subject"),
                (subjects.ROUTER_LOAD_ALL, "routerload", "new")):
            # one consumer per planner process (each needs every event), removed an hour after it is gone
            sub = await p.bus.subscribe(subject, durable_name("planner", name, ns, settings.holder_id), host.deliver,
                                        deliver=deliver, inactive_threshold_s=3600.0)  # type: ignore[arg-type]
            p.on_exit(sub.stop)
        p.supervisor.every("lease", settings.lease_renew_s, lease, timeout_s=settings.request_timeout_s * 2)
        p.supervisor.every("tick", settings.tick_s, tick, timeout_s=max(5.0, settings.tick_s))
        if actuation is not None:
            vms = actuation  # bound for the closure, as not None

            async def cloud_step() -> None:
                await vms.step(core.plan)
            # each call has its own deadline; a pass over many pools may take several
            p.supervisor.every("vms", cloud.poll_s, cloud_step, timeout_s=cloud.call_timeout_s * 4)
        if on_start is not None:
            on_start(p)
        await p.run(stop)
