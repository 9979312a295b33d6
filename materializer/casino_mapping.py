"""The mapping of an operator's game-action table onto the casino_activity feed.

The spec defines casino_activity by sessions aggregated from individual game actions
(ARCHITECTURE.md decision 7), so its mapping does not say what each feed column *is*,
but how to read one action: its identity, its own time, whether it is a bet or a win
and for how much, and the session's descriptive columns as seen on that action.
Operators keep actions in different shapes, and each must be expressible without code
(docs/casino.md has the full reference and examples)::

    casino_activity:
      source: public.game_actions
      actions:
        key: CAST(action_id AS VARCHAR)  # the action's identity (from the primary key columns)
        time: created                    # the action's own time (created_at/updated_at)
        bet: "kind = 'BET'"              # rows that are bets: TRUE/1; -1 for a row cancelling one
        win: "kind = 'WIN'"
        amount: amount                   # one amount column: counts as bet or win per the above
        # or, one row per round with two amounts: bet_amount: bet, win_amount: win
        # (then bet/win default to "amount > 0")
      fields:                            # the session's descriptive columns, per action
        player_id: CAST(user_id AS VARCHAR)
        session_id: CAST(session_uid AS VARCHAR)
        ...
      on_delete: remove                  # default; 'ignore' for tables that purge old rows

Expressions are DuckDB SQL over the source columns, checked at load like every other
feed's (materializer/mapping.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from materializer.mapping import FeedMapping, MappingError, SourceTable, _expr, referenced_columns
from schemas import Feed, Field

FEED = "casino_activity"

#: Feed columns computed per session from all its actions; never mapped directly.
AGGREGATES = ("bet_count", "win_count", "bet_amount", "win_amount", "created_at", "updated_at")

_KEYS = {"source", "actions", "fields", "on_delete"}
_ACTION_KEYS = {"key", "time", "bet", "win", "amount", "bet_amount", "win_amount"}
DELETE_POLICIES = ("remove", "ignore")

# What each action input is, for the load-time checks of constants and the batch-time
# validation (materializer/validate.py): the same rules as feed fields of those types.
INPUTS = {
    "key": Field("key", "string", True, "The action's identity."),
    "time": Field("time", "timestamp", True, "The action's own time."),
    "bet": Field("bet", "integer", False, "Bets this row counts as."),
    "win": Field("win", "integer", False, "Wins this row counts as."),
    "amount": Field("amount", "decimal", False, "The row's amount.", scale=8),
    "bet_amount": Field("bet_amount", "decimal", False, "The row's bet amount.", scale=8),
    "win_amount": Field("win_amount", "decimal", False, "The row's win amount.", scale=8),
}


@dataclass(frozen=True)
class ActionsMapping(FeedMapping):
    """casino_activity from a table of game actions.

    ``exprs`` holds the descriptive feed fields (read per action); ``inputs`` the action
    inputs of :data:`INPUTS` that the mapping gives (``bet``/``win`` are always there,
    defaulted from the amounts).
    """

    inputs: dict[str, str] | None = None
    on_delete: str = "remove"

    @property
    def action(self) -> dict[str, str]:
        assert self.inputs is not None
        return self.inputs

    @property
    def descriptive(self) -> list[Field]:
        """The feed fields read from each action (all but the aggregates and the stamp)."""
        return [f for f in self.feed.fields if f.name not in AGGREGATES and f.name != self.feed.stamp]

    @cached_property
    def columns(self) -> frozenset[str]:
        exprs = list(self.exprs.values()) + list(self.action.values())
        return frozenset(col for sql in exprs for col in referenced_columns(sql))


def parse_actions(feed: Feed, spec: dict[str, Any], source: SourceTable, ctx: str) -> ActionsMapping:
    """Check one ``casino_activity`` entry of a mapping file and build its mapping."""
    if feed.name != FEED:
        raise MappingError(f"{ctx}: 'actions' is only for {FEED}, which is aggregated from game actions")
    unknown = sorted(str(k) for k in spec if k not in _KEYS)
    if unknown:
        raise MappingError(f"{ctx}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(_KEYS))}")
    doc = spec.get("actions")
    if not isinstance(doc, dict):
        raise MappingError(
            f"{ctx}: {FEED} is aggregated per session from the operator's table of game actions; add "
            "'actions:' with key, time and how to tell bets and wins (bet/win and amount, or bet_amount/"
            "win_amount); see docs/casino.md")
    inputs = _inputs(doc, source, f"{ctx}, actions")
    exprs = _descriptive(feed, spec.get("fields"), source, ctx)
    policy = spec.get("on_delete", "remove")
    if policy not in DELETE_POLICIES:
        raise MappingError(f"{ctx}: on_delete must be 'remove' (a deleted action leaves its session's "
                           "aggregate) or 'ignore' (for tables that purge old actions)")
    return ActionsMapping(feed, source, exprs, None, inputs=inputs, on_delete=policy)


def _inputs(doc: dict[str, Any], source: SourceTable, ctx: str) -> dict[str, str]:
    unknown = sorted(str(k) for k in doc if k not in _ACTION_KEYS)
    if unknown:
        raise MappingError(f"{ctx}: unknown key(s) {', '.join(unknown)}; expected "
                           f"{', '.join(sorted(_ACTION_KEYS))}")
    out = {name: _expr(doc[name], INPUTS[name], source, f"{ctx}.{name}") for name in INPUTS if name in doc}
    for need in ("key", "time"):
        if need not in out:
            what = ("the action's identity, from the table's primary key columns (a delete event carries "
                    "only those), e.g. CAST(id AS VARCHAR)") if need == "key" else "the action's own time"
            raise MappingError(f"{ctx}: '{need}' is required: {what}")
    for side in ("bet", "win"):
        amount = f"{side}_amount"
        if side not in out and amount not in out:
            raise MappingError(f"{ctx}: say which rows are {side}s: '{side}' (an SQL condition, or a count: "
                               f"1, or -1 for a row that cancels one) and 'amount', or '{amount}' alone "
                               f"(a row is a {side} when it is > 0)")
        if amount not in out and "amount" not in out:
            raise MappingError(f"{ctx}: say how much each {side} is: '{amount}', or 'amount' for a table "
                               "with one amount column")
    if "amount" in out and "bet_amount" in out and "win_amount" in out:
        raise MappingError(f"{ctx}: 'amount' is unused when both bet_amount and win_amount are given; drop it")
    return out


def _descriptive(feed: Feed, doc: Any, source: SourceTable, ctx: str) -> dict[str, str]:
    if not isinstance(doc, dict):
        raise MappingError(f"{ctx}: 'fields' must map the session's columns to SQL expressions over one action")
    names = {f.name for f in feed.fields}
    for name in doc:
        if name in AGGREGATES:
            raise MappingError(f"{ctx}, field {name!r}: computed per session from all its actions; describe "
                               "the actions under 'actions:' instead (docs/casino.md)")
        if name == feed.stamp:
            raise MappingError(f"{ctx}, field {name!r}: is Feedstore's own change stamp; remove it")
        if name not in names:
            raise MappingError(f"{ctx}, field {name!r}: not a field of {feed.name}")
    exprs = {}
    for f in feed.fields:
        if f.name in AGGREGATES or f.name == feed.stamp:
            continue
        if f.name in doc:
            exprs[f.name] = _expr(doc[f.name], f, source, f"{ctx}, field {f.name!r}")
        elif f.required:
            raise MappingError(f"{ctx}, field {f.name!r}: required by the spec but not mapped; add an "
                               "expression over the action row")
        else:
            exprs[f.name] = "NULL"
    return exprs


__all__ = ["AGGREGATES", "DELETE_POLICIES", "FEED", "INPUTS", "ActionsMapping", "parse_actions"]
