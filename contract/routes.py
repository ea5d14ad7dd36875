"""The gateway's route table, derived from the models' `route*` config parameters.

    table = route_table()                      # committed repository
    table.route("detect").choices              # ("yolo", "centernet"): ?model= values, default first
    table.route("faces").model_for("scrfd_500m")   # "faces_scrfd_500m"
    table.endpoint("centernet")                # "/v1/detect?model=centernet"

A route is named by its path under /v1 ("embed/image" is /v1/embed/image); perf calls it by
its `key` ("embed_image"). A route named `<route>/compare` (`Route.pair`) takes a PAIR of
inputs rather than a batch: each of its models must reach a `match_threshold` (its own or a
step's: `RouteTable.match_threshold`), checked when the table is built.
Which models a route serves, which one it calls by default and
what a `?model=` value means are stated only in the models' configs (contract/facts.py):
the gateway's routes, /v1/models, the OpenAPI enums and the perf tools read this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import MODEL_REPOSITORY, ContractError, ModelContract, load_all
from .facts import MATCH_THRESHOLD, ROUTE_DEFAULT, facts

PREFIX = "/v1/"
COMPARE = "/compare"


@dataclass(frozen=True)
class RouteModel:
    choice: str                       # the route's ?model= value
    model: str                        # the Triton model it calls


@dataclass(frozen=True)
class Route:
    name: str                         # "faces", "embed/image"
    models: tuple[RouteModel, ...]    # the default first

    @property
    def path(self) -> str:
        return PREFIX + self.name

    @property
    def key(self) -> str:
        """The route's name where a slash does not fit (perf's --routes, file names)."""
        return self.name.replace("/", "_")

    @property
    def pair(self) -> bool:
        """The route compares two inputs (a body of `a` and `b`), not a batch of images."""
        return self.name.endswith(COMPARE)

    @property
    def default(self) -> RouteModel:
        return self.models[0]

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(m.choice for m in self.models)

    def model_for(self, choice: str) -> str:
        for m in self.models:
            if m.choice == choice:
                return m.model
        raise ContractError(f"{self.path} has no model {choice!r}; choices: {', '.join(self.choices)}")

    def endpoint(self, model: str) -> str:
        """How a client reaches `model` on this route."""
        m = next(m for m in self.models if m.model == model)
        return self.path if m is self.default else f"{self.path}?model={m.choice}"


@dataclass(frozen=True)
class RouteTable:
    routes: tuple[Route, ...]
    contracts: dict[str, ModelContract]

    def route(self, name: str) -> Route:
        for r in self.routes:
            if r.name == name or r.key == name:
                return r
        raise ContractError(f"no model in the repository states route {name!r}; routes: "
                            f"{', '.join(r.name for r in self.routes)}")

    @property
    def models(self) -> tuple[str, ...]:
        """Every model a route calls (each route's default first)."""
        return tuple(dict.fromkeys(m.model for r in self.routes for m in r.models))

    def endpoint(self, model: str) -> str | None:
        for r in self.routes:
            if model in (m.model for m in r.models):
                return r.endpoint(model)
        return None

    def default_threshold(self, model: str, output: str = "scores") -> float | None:
        """The default score threshold of `output` of `model`: its own parameter, else that of
        the ensemble step or pipeline step whose output it is; None: the model's floor."""
        c = self.contracts.get(model)
        if c is None:
            return None
        own = facts(c).default_threshold
        if own is not None:
            return own
        for step in c.config.ensemble_scheduling.step:
            for inner, outer in step.output_map.items():
                if outer == output:
                    return self.default_threshold(step.model_name, inner)
        for step in c.steps if c.kind != "ensemble" else ():
            if step in self.contracts and output in (o.name for o in self.contracts[step].outputs):
                return self.default_threshold(step, output)
        return None


    def match_threshold(self, model: str) -> tuple[float, str] | None:
        """(cosine threshold, the model that states it) for the embeddings `model` answers:
        its own `match_threshold` parameter, else that of the first step (depth first) that
        states one: the embedder, whose weights the threshold is calibrated for."""
        c = self.contracts.get(model)
        if c is None:
            return None
        own = facts(c).match_threshold
        if own is not None:
            return own, model
        for step in c.steps:
            found = self.match_threshold(step)
            if found is not None:
                return found
        return None


def from_contracts(contracts: dict[str, ModelContract]) -> RouteTable:
    by_route: dict[str, list[tuple[bool, RouteModel]]] = {}
    for name, c in sorted(contracts.items()):
        f = facts(c)
        for route in f.routes:
            by_route.setdefault(route, []).append((f.route_default, RouteModel(f.choice, name)))
    routes = []
    for name, entries in by_route.items():
        choices = [m.choice for _, m in entries]
        if len(set(choices)) != len(choices):
            raise ContractError(f"route {name!r}: two models state the same route_choice ({', '.join(choices)})")
        defaults = [m for d, m in entries if d]
        if len(entries) > 1 and len(defaults) != 1:
            raise ContractError(f"route {name!r} has models {', '.join(m.model for _, m in entries)}: exactly one "
                                f"states {ROUTE_DEFAULT} true (got {len(defaults)})")
        first = defaults[0] if defaults else entries[0][1]
        routes.append(Route(name, (first, *(m for _, m in entries if m is not first))))
    table = RouteTable(tuple(sorted(routes, key=lambda r: r.name)), dict(contracts))
    for r in table.routes:
        lacking = [m.model for m in r.models if r.pair and table.match_threshold(m.model) is None]
        if lacking:
            raise ContractError(f"route {r.name!r} compares embeddings, but neither {', '.join(lacking)} "
                                f"nor a step it runs states {MATCH_THRESHOLD}")
    return table


def route_table(repository: Path = MODEL_REPOSITORY) -> RouteTable:
    return from_contracts(load_all(repository))
