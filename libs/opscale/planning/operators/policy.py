"""The `operator_level` and `model_level` planning policies (issue 14 items 5-6): per model and region,
the operator planner on the observed arrival rate and token lengths against the tiers' objectives.

Both run the same queueing model (`OperatorPlanner`); they differ only in what may be scaled:

- `operator_level`: the stages of the operator plan (sets of operator families, each on whole GPUs or
  an SM share). The first plan of a pool fixes its partition; later plans re-size the replicas of
  those stages only (`OperatorPlanner.plan_partition`): replication, never resharding (PAPERS.md §1.6).
  The floor is one replica of every stage of each phase: the base instance, split into its stages.
- `model_level`: one stage holding every operator, on whole GPUs: whole replicas.

What a policy decides for a pool is `StageTargets`: replicas per (phase, stage), with what each
replica costs (GPU-equivalents, SM share, batch cap) and how long one takes to become ready
(`load_s`): an operator replica joins the running base engine and loads only its operators' weights
(`opscale.perf.operator_replicas.operators_attach_s`); a whole replica starts an engine and loads the model
(`opscale.perf.loading.load_time_s`, warm). The targets are the policy's state (`OperatorPolicyState`),
the one owner of the operator replicas; `opscale.runtime.sim.operator_stages` executes them.

What the planner core and the node-agents actuate (`Effects`):

- `model_level`: `desired` whole instances per pool, no operator replicas.
- `operator_level`: OpScale's runtime shape. `desired` is the pool's base (monolithic) instances: the
  floor is one (or the deployment's min_replicas); another opens only when the operator replicas
  would need more GPU-equivalents than `replica_gpus_per_base` per base instance. On top,
  `operator_replicas` carries the elastic replicas of each stage, which the planner spreads over the
  base instances (opscale.planning.operator_replicas) and the node-agents attach to the running
  engines in place. A base instance is a unified engine that runs every operator of both phases on
  its own GPUs, one stage after another (opscale.perf.operator_replicas): it is one replica of every
  stage when one replica of each, at the plan's GPU-equivalents, fits its GPUs, and otherwise that
  fraction of one (`base_cover`: the planner's floor prices each stage's replica on GPUs of its own,
  which one base's GPUs do not hold twice). So a stage's operator replicas are, over its phases, the
  most replicas any phase's target gives it, less what the base instances cover, rounded up (per
  operator family the max over prefill and decode, when both phases have the same partition; a stage
  of one phase only counts that phase). A stage of every operator (a whole-model stage, which the
  `planned` partition may give a phase) is planned on whole GPUs and run as base instances, never as
  attached replicas: `whole_stage_bases` says how many (`plan_gpus`: its GPUs over tp, one base per
  planned replica, as model_level realises the same plan; `per_phase`: one base per replica of the
  phase needing the most, each counted as a replica of both phases' whole-model stages). The GPUs
  those stages take are the bases'; what is left of the bases' GPUs covers the other stages
  (`base_cover`), and with `idle_bases_cover` so does the time the whole-model stages leave idle at the
  observed rate (their planned utilisation over the headroom). `decode_headroom` plans the decode stages
  at a factor of their own (the prefill stage, the bases, keeps `headroom`). An agent whose backend
  cannot split operators (`openai`: vLLM and SGLang do not) ignores them and says so in its log:
  model-level scaling of the base instances.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from opscale.model import LatencyObjective, Observation, OperatorReplicas, PoolKey, Role
from opscale.perf import default_catalog
from opscale.perf.loading import LoadSource, LoadTimeParams, load_time_s
from opscale.perf.operator_replicas import operators_attach_s
from opscale.perf.operators import Operator
from opscale.planning.base import DeploymentSpec, Effects
from opscale.planning.operators.config import OperatorPlannerConfig, Workload
from opscale.planning.operators.dag import Phase
from opscale.planning.operators.plan import OperatorPlan, StagePlan
from opscale.planning.operators.planner import OperatorPlanner

Level = Literal["operator", "model"]
WholeStageBases = Literal["plan_gpus", "per_phase"]
_ALL = frozenset(Operator)


class OperatorPolicyConfig(BaseModel):
    """Parameters of `operator_level` and `model_level` (the objectives are the tiers')."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    planner: OperatorPlannerConfig = Field(default_factory=OperatorPlannerConfig)
    min_rps: float = Field(0.1, gt=0, description="Arrival rate planned for when a pool sees less (or none).")
    headroom: float = Field(1.0, ge=1, description="Factor on the observed arrival rate before planning.")
    decode_headroom: float | None = Field(
        None, ge=1, description="operator_level: the factor for the stages of the decode phase, when it differs from "
                                "headroom (None: headroom). The misses headroom buys back are first tokens late on "
                                "the base instances, which run the prefill stage; decode replicas planned at the "
                                "prefill's headroom cost GPUs without buying that back (README, operators).")
    backlog_drain_s: float = Field(
        2.0, gt=0, description="Requests queued in the pool are planned as extra arrivals over this many "
                               "seconds, so a step's backlog drains instead of only its new rate being met.")
    partition: Literal["per_operator", "planned"] = Field(
        "per_operator", description="operator_level: each pool's stages, fixed for the run (resharding costs far "
                                    "more than replicating, PAPERS.md §1.6). per_operator: one stage per operator "
                                    "family, so the bottleneck family alone scales (OpScale's elastic operator "
                                    "replicas); planned: the partition of the plan at partition_rps.")
    partition_rps: PositiveFloat | dict[str, PositiveFloat] | None = Field(
        None, description="partition 'planned': the arrival rate whose plan fixes the stages (the peak the split "
                          "is provisioned for), one for every model or per model name (a model not named: the "
                          "first rate observed). None: the first rate observed.")
    scale_in_window_s: float = Field(
        0.0, ge=0, description="A stage keeps the most replicas any plan of the last this many seconds gave it "
                               "(a stabilisation window: noise in a short rate window does not churn replicas "
                               "that cost a load each); 0: every plan is followed at once.")
    sticky_shares: bool = Field(
        True, description="operator_level: re-plans keep each stage's SM share and change its replica count "
                          "(a share change replaces the stage's replicas, each paying a load).")
    load: LoadTimeParams = Field(default_factory=LoadTimeParams)
    replica_gpus_per_base: float = Field(
        7.0, gt=0, description="operator_level: GPU-equivalents of operator replicas one base instance carries "
                               "(its host's GPUs less its own); more open another base instance.")
    whole_stage_bases: WholeStageBases | dict[str, WholeStageBases] = Field(
        "plan_gpus", description="operator_level: how a plan's stages of every operator (whole-model stages, "
                                 "planned on whole GPUs: the runtime runs them as unified base engines) become "
                                 "base instances, for every model or per model name (a model not named: "
                                 "plan_gpus). plan_gpus: the stages' GPUs over tp, one engine per planned "
                                 "replica of either phase, as model_level realises the same plan; per_phase: one "
                                 "base per replica of the phase needing the most, each counted as a replica of "
                                 "both phases (fewer GPUs than the plan priced: README, operators experiment).")
    idle_bases_cover: bool = Field(
        False, description="operator_level: the time a plan's whole-model stages leave idle on their base instances "
                           "at the observed rate (1 - the stage's planned utilisation / headroom) covers replicas of "
                           "the other stages, as the engine runs every stage on a base (opscale.perf."
                           "operator_replicas); False: a base's GPUs that a whole-model stage takes count as busy.")
    full_replica_source: LoadSource = Field(
        "warm", description="Where a whole replica's weights come from (an operator replica always attaches "
                            "to a running engine and pulls its operators' weights warm).")


@dataclass(frozen=True, slots=True)
class StageTarget:
    """The replicas one stage should have: each on `share` of `tp` GPUs (`gpu_cost` GPU-equivalents),
    running batches of up to `batch` customers, ready `load_s` after it is added."""

    phase: Phase
    operators: frozenset[Operator]
    replicas: int
    tp: int
    share: float
    batch: int
    gpu_cost: float
    load_s: float
    transfer_s: float
    utilisation: float = 1.0  # of each replica at the planned rate (lam / (R mu))

    @property
    def name(self) -> str:
        return f"{self.phase.value}/" + "+".join(sorted(op.value for op in self.operators))


@dataclass(frozen=True, slots=True)
class StageTargets:
    """A pool's stages, prefill's then decode's, in path order; and the plan they come from."""

    level: Level
    stages: tuple[StageTarget, ...]
    plan: OperatorPlan

    def phase(self, phase: Phase) -> tuple[StageTarget, ...]:
        return tuple(s for s in self.stages if s.phase is phase)

    @property
    def gpu_cost(self) -> float:
        return sum(s.replicas * s.gpu_cost for s in self.stages)


@dataclass(frozen=True, slots=True)
class OperatorPolicyState:
    targets: dict[PoolKey, StageTargets] = field(default_factory=dict)
    # (pool, stage name) -> the (time, replicas) its recent plans gave, for scale_in_window_s
    recent: dict[tuple[PoolKey, str], tuple[tuple[float, int], ...]] = field(default_factory=dict)


class OperatorScalingPolicy:
    """`operator_level` or `model_level` (see the module docstring)."""

    def __init__(self, deployments: list[DeploymentSpec], objective: LatencyObjective,
                 config: OperatorPolicyConfig, level: Level) -> None:
        self.level: Level = level
        self.name = f"{level}_level"
        self.config = config
        self.objective = objective
        catalog = default_catalog()
        self._deployments = {d.model: d for d in deployments}
        self._planners: dict[str, OperatorPlanner] = {}
        for name in ("partition_rps", "whole_stage_bases"):
            per_model = getattr(config, name)
            unknown = sorted(set(per_model) - set(self._deployments)) if isinstance(per_model, dict) else []
            if unknown:
                raise ValueError(f"planning policy {self.name!r}: {name} names no deployed model: {unknown}; "
                                 f"deployed: {sorted(self._deployments)}")
        for d in deployments:
            if d.disaggregated:
                raise ValueError(f"planning policy {self.name!r}: deployment {d.model!r} is disaggregated; "
                                 f"the operator planner splits a unified deployment itself")
            assert d.sku is not None  # a unified deployment has one
            self._planners[d.model] = OperatorPlanner(catalog.model(d.model), catalog.sku(d.sku), objective,
                                                      config.planner)
            try:  # an objective no replica count meets on this SKU is bad config: say so now, by field
                self.targets(d.model, self.workload(d, 0.0, 0.0, 0.0))
            except ValueError as exc:
                raise ValueError(f"planning policy {self.name!r}: deployment {d.model!r} on {d.sku}: {exc}") from None

    def planner(self, model: str) -> OperatorPlanner:
        return self._planners[model]

    def deployment(self, model: str) -> DeploymentSpec:
        return self._deployments[model]

    def initial_state(self) -> OperatorPolicyState:
        return OperatorPolicyState()

    def workload(self, deployment: DeploymentSpec, rps: float, prompt_tps: float, output_tps: float,
                 queued: int = 0, headroom: float | None = None) -> Workload:
        """What a pool is planned for: its observed rate plus its backlog over backlog_drain_s (times
        headroom, at least min_rps) and mean lengths (the deployment's typical ones until traffic is seen)."""
        if rps > 0 and prompt_tps > 0 and output_tps > 0:
            prompt, output = prompt_tps / rps, output_tps / rps
        else:
            prompt, output = deployment.typical_prompt_tokens, deployment.typical_output_tokens
        rate = (rps + queued / self.config.backlog_drain_s) * (self.config.headroom if headroom is None else headroom)
        return Workload(max(rate, self.config.min_rps), max(1, round(prompt)),
                        max(1, round(output)))

    def targets(self, model: str, workload: Workload, previous: StageTargets | None = None) -> StageTargets:
        """The stages and replicas for `workload`: keeping `previous`'s partition at operator level."""
        planner = self._planners[model]
        if self.level == "model":
            plan = planner.model_level(workload)
        else:
            if previous is None and self.config.partition == "per_operator":
                split = [[frozenset({op}) for op in Operator]] * 2
            elif previous is None:
                rate = self.config.partition_rps
                if isinstance(rate, dict):
                    rate = rate.get(model)
                shape = planner.plan(workload if rate is None else replace(workload, arrival_rps=rate))
                split = [[s.operators for s in shape.phase(phase).stages] for phase in (Phase.PREFILL, Phase.DECODE)]
            else:
                split = [[s.operators for s in previous.phase(phase)] for phase in (Phase.PREFILL, Phase.DECODE)]
            plan = self._replan(planner, workload, split, previous)
        stages = tuple(self._target(planner, phase, stage)
                       for phase in (Phase.PREFILL, Phase.DECODE) for stage in plan.phase(phase).stages)
        return StageTargets(self.level, stages, plan)

    def _decode_at(self, model: str, found: StageTargets, workload: Workload) -> StageTargets:
        """`found` with the decode phase's stages as planned for `workload` (decode_headroom), in the same
        partition and on the same shares as `_replan` (found's, else whole GPUs); the prefill phase's
        stages and the plan stay `found`'s. Only the decode phase is planned again."""
        planner = self._planners[model]
        split = [s.operators for s in found.phase(Phase.DECODE)]
        whole = {(Phase.DECODE, _ALL): 1.0}
        phase = None
        if self.config.sticky_shares:
            try:
                phase = planner.plan_phase(workload, Phase.DECODE, split,
                                           {**{(s.phase, s.operators): s.share for s in found.stages}, **whole})
            except ValueError:
                pass
        if phase is None:
            phase = planner.plan_phase(workload, Phase.DECODE, split, whole)
        decode = {s.operators: self._target(planner, Phase.DECODE, s) for s in phase.stages}
        return replace(found, stages=tuple(decode.get(s.operators, s) if s.phase is Phase.DECODE else s
                                           for s in found.stages))

    def _replan(self, planner: OperatorPlanner, workload: Workload, split: list[list[frozenset[Operator]]],
                previous: StageTargets | None) -> OperatorPlan:
        """Keep the running stages' SM shares (`sticky_shares`): a new share means new replicas, each
        paying a load, for capacity the running ones give by adding replicas at their share. Where the
        kept shares cannot meet the budget at all, the shares are re-chosen.

        A stage of every operator is planned on whole GPUs: the runtime runs it as unified base engines
        on whole GPUs (`base_and_replicas`), never as SM-share partitions, so a plan on shares would
        price what does not run (a Qwen2-7B stage on a quarter of an H100 became a whole-GPU base
        each, 1.7-2x model level's GPUs). A unified engine on a share would not pay either: its
        per-iteration overhead does not shrink with the share (README, operators experiment)."""
        whole = {(phase, _ALL): 1.0 for phase in (Phase.PREFILL, Phase.DECODE)}
        if previous is not None and self.config.sticky_shares:
            try:
                return planner.plan_partition(workload, *split, shares={**{(s.phase, s.operators): s.share
                                                                            for s in previous.stages}, **whole})
            except ValueError:
                pass
        return planner.plan_partition(workload, *split, shares=whole)

    def _target(self, planner: OperatorPlanner, phase: Phase, stage: StagePlan) -> StageTarget:
        if self.level == "model" or stage.operators == frozenset(Operator):
            # A replica of every operator is a whole replica: a new engine, the whole model's weights.
            load = load_time_s(planner.model, planner.sku, stage.tp, self.config.full_replica_source, self.config.load)
        else:
            load = operators_attach_s(planner.model, stage.operators, stage.tp, self.config.load)
        per_replica = stage.gpu_cost / stage.replicas
        return StageTarget(phase, stage.operators, max(1, stage.replicas), stage.tp, stage.share, stage.batch,
                           per_replica, load, stage.transfer_s, stage.utilisation)

    def decide(self, observation: Observation, state: OperatorPolicyState, now_s: float) -> Effects:
        targets = dict(state.targets)
        recent = dict(state.recent)
        desired: dict[PoolKey, int] = {}
        reasons: dict[PoolKey, str] = {}
        operator_replicas: dict[PoolKey, tuple[OperatorReplicas, ...]] = {}
        for key, pool in observation.pools.items():
            deployment = self._deployments.get(key.model)
            if deployment is None or key.role is not Role.UNIFIED:
                continue
            if deployment.regions and key.region not in deployment.regions:
                continue
            workload = self.workload(deployment, pool.arrival_rps, pool.prompt_tokens_per_s, pool.output_tokens_per_s,
                                     pool.queued)
            try:
                found = self.targets(key.model, workload, targets.get(key))
                if self.level == "operator" and self.config.decode_headroom not in (None, self.config.headroom):
                    found = self._decode_at(key.model, found, self.workload(
                        deployment, pool.arrival_rps, pool.prompt_tokens_per_s, pool.output_tokens_per_s, pool.queued,
                        self.config.decode_headroom))
            except ValueError as exc:
                # More load than max_replicas allows: keep the last targets, hold the pool at its bound.
                desired[key] = deployment.max_replicas
                reasons[key] = f"{self.name}: {exc}"
                continue
            found = self._stabilised(key, found, recent, now_s)
            targets[key] = found
            if self.level == "model":
                whole = _whole_replicas(found.plan, deployment.tp)
                desired[key] = min(max(whole, deployment.min_replicas), deployment.max_replicas)
                shape = f"{desired[key]} whole instance(s)"
            else:
                desired[key], extra = self.base_and_replicas(found, deployment.min_replicas, deployment.max_replicas,
                                                             deployment.tp, self.whole_stage_bases(key.model))
                operator_replicas[key] = extra
                shape = (f"{desired[key]} base instance(s) + operator replicas "
                         + (", ".join(f"{r.name} x{r.replicas}" for r in extra) or "none"))
            reasons[key] = (f"{self.name}: {workload.arrival_rps:.2f} req/s -> "
                            + ", ".join(f"{s.name} x{s.replicas}" for s in found.stages) + f"; {shape}")
        return Effects(desired=desired, state=replace(state, targets=targets, recent=recent), reasons=reasons,
                       operator_replicas=operator_replicas)

    def whole_stage_bases(self, model: str) -> WholeStageBases:
        rule = self.config.whole_stage_bases
        return rule.get(model, "plan_gpus") if isinstance(rule, dict) else rule

    def base_and_replicas(self, targets: StageTargets, min_bases: int, max_bases: int, tp: int = 1,
                          whole_stage_bases: WholeStageBases = "plan_gpus") -> tuple[int, tuple[OperatorReplicas, ...]]:
        """The base instances and the operator replicas on top that realise `targets` (see the module
        docstring): each stage at the most replicas its phases give it, less what the bases cover."""
        by_stage = _stages_by_operators(targets)
        # A stage of every operator is a whole replica: its replicas are base instances, not attached
        # ones, and the GPUs they take are the bases' (the rest of the bases' GPUs cover other stages).
        attached = [s for s in by_stage.values() if s.operators != _ALL]
        held = whole_stage_gpus(targets, whole_stage_bases)
        bases = min(max(1, min_bases, math.ceil(held / tp - 1e-9)), max(1, max_bases))
        headroom = {Phase.PREFILL: self.config.headroom, Phase.DECODE: self.config.decode_headroom or self.config.headroom}
        busy = whole_stage_gpus(targets, whole_stage_bases, headroom) if self.config.idle_bases_cover else held

        def extra_of(stage: StageTarget) -> int:
            return max(0, math.ceil(stage.replicas - bases * base_cover(targets, tp, bases, busy) - 1e-9))
        while True:
            extra_gpus = sum(extra_of(s) * s.gpu_cost for s in attached)
            if extra_gpus <= bases * self.config.replica_gpus_per_base or bases >= max_bases:
                break
            bases += 1
        # An attached replica serves its operators' work of both phases; its batch cap bounds the decode
        # sequences of a cohort (a prefill cohort is cut by tokens), so a stage with a decode phase
        # carries that phase's cap.
        decode_batch = {s.operators: s.batch for s in targets.phase(Phase.DECODE)}
        extra = tuple(OperatorReplicas(tuple(sorted(op.value for op in s.operators)), extra_of(s), s.tp,
                                       s.share, decode_batch.get(s.operators, s.batch))
                      for s in sorted(attached, key=lambda s: s.name) if extra_of(s) > 0)
        return bases, extra

    def _stabilised(self, key: PoolKey, found: StageTargets, recent: dict[tuple[PoolKey, str], tuple[tuple[float, int], ...]],
                    now_s: float) -> StageTargets:
        """Each stage at the most replicas its plans of the last scale_in_window_s gave (at the current
        share; a share change resets the stage's history)."""
        window = self.config.scale_in_window_s
        if window <= 0:
            return found
        stages = []
        for stage in found.stages:
            name = (key, f"{stage.name}@{stage.share:g}")
            kept = tuple(p for p in recent.get(name, ()) if p[0] > now_s - window) + ((now_s, stage.replicas),)
            recent[name] = kept
            stages.append(replace(stage, replicas=max(r for _, r in kept)))
        return replace(found, stages=tuple(stages))


def _stages_by_operators(targets: StageTargets) -> dict[frozenset[Operator], StageTarget]:
    """Each operator set's stage target with the most replicas over the phases."""
    by_stage: dict[frozenset[Operator], StageTarget] = {}
    for stage in targets.stages:
        held = by_stage.get(stage.operators)
        if held is None or stage.replicas > held.replicas:
            by_stage[stage.operators] = stage
    return by_stage


def whole_stage_gpus(targets: StageTargets, rule: Literal["per_phase", "plan_gpus"],
                     busy_at: dict[Phase, float] | None = None) -> float:
    """GPUs the base instances give the plan's stages of every operator (0 when it has none): per_phase,
    the most any phase's whole-model stage holds; plan_gpus, what all of them hold (see
    `OperatorPolicyConfig.whole_stage_bases`). `busy_at`: each phase's headroom; only the part the stages
    keep busy at the observed rate counts, their planned utilisation over it (`idle_bases_cover`)."""
    gpus = [s.replicas * s.gpu_cost * (1.0 if busy_at is None else min(1.0, s.utilisation / busy_at[s.phase]))
            for s in targets.stages if s.operators == _ALL]
    if not gpus:
        return 0.0
    return max(gpus) if rule == "per_phase" else sum(gpus)


def base_cover(targets: StageTargets, tp: int, bases: int = 1, whole_gpus: float = 0.0) -> float:
    """How many replicas of each stage of fewer than every operator one of `bases` base instances on
    `tp` GPUs stands for, once `whole_gpus` of their GPUs run the stages of every operator. A base runs
    every stage of both phases on its GPUs in turn (opscale.perf.operator_replicas): it is one replica
    of each only when one replica of every such stage of each phase (at the plan's GPU-equivalents)
    fits its spare GPUs; otherwise that fraction of one, the rest coming from attached replicas."""
    floor = sum(s.gpu_cost for s in targets.stages if s.operators != _ALL)  # one replica of each stage
    spare = max(0.0, bases * tp - whole_gpus) / bases if bases > 0 else 0.0
    return min(1.0, spare / floor) if floor > 0 else 1.0


def _whole_replicas(plan: OperatorPlan, tp: int) -> int:
    return max(1, math.ceil(plan.gpus / tp))
