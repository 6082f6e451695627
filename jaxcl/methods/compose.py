"""Methods that compose from the config: a chain ``base+modifier+...`` (``methods=ewc+gu``,
``get_method("finetune+kl")``), built from the registry's pieces in one fixed way.

The first piece is the **base**: a method that trains alone. Its loss, its optimizer (``lr``,
``optim`` ... from its own section), its rollout, ``predict`` and ``sample_seen`` are the chain's.
Every later piece joins in its **modifier form** (:class:`~.base.Joins`: ``kl``, ``gu``, ``er``),
configured by its own section (``kl.beta``, ``er.replay_fraction``; its ``lr`` and optimizer
options are not used). The levels combine as follows, each piece keeping its own state:

* loss wrappers nest in chain order: ``L = w_n(... w_1(L_base))``;
* gradient transforms run before the base's whole transform (its projections and optimizer):
  ``optax.chain(g_1, ..., g_n, tx_base)``;
* data transforms chain (:func:`jaxcl.data.context.chain`): first those of the pieces that replace
  rows of the batch (replay, ``Joins.rows``), then the others, each group in chain order, so a
  reference computed on the batch (GRPO's, KL's) sees the replayed rows;
* extra args (reference gradients) merge; a name given by two pieces is refused;
* consolidates run in chain order, each on its own slot of the data state and of the optimizer
  state; edits apply in chain order after training.

Refused with a one-line ValueError (a ConfigError, exit 2, from the command line): an unknown or
repeated piece; a modifier-only piece alone or first (``kl``, ``gu``); a later piece that is a
whole method (it would bring a second whole loss and a second optimizer: ``ewc+npo``); a
modifier that does not join the base's kind (``grpo+kl``: GRPO is RL and has its own KL); a pair a
piece declares in ``Joins.conflicts`` (``gu-npo+gu``: two projections).

In a composite the base's hyperparameters and options keep their names (``lr``), the modifiers'
are ``<piece>.<name>`` (``kl.beta``); :func:`settings_section` gathers them from the config.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import optax

from ..data.context import chain as chain_data
from ..engine import DataTransform
from .base import METHODS, OPTIMIZER_OPTIONS, Method, MethodSpec


class Modifier(NamedTuple):
    """A piece's contribution to a chain (each field optional)."""

    wrap: Callable | None = None  # LossFn -> LossFn
    tx: optax.GradientTransformation | None = None  # runs before the base's transform
    data: DataTransform | None = None
    extra_args: Callable | None = None  # (params, batch, key) -> dict of keyword extra args
    consolidate: Callable | None = None  # (state, batch, key) -> state, on this piece's own slots
    edit: Callable | None = None  # (params, data, hp, key) -> params, with this piece's hp


def modifiers(kinds=None) -> tuple[str, ...]:
    """The registered pieces that join a chain after a base (of one of ``kinds``)."""
    return tuple(
        sorted(
            n
            for n, s in METHODS.items()
            if s.joins is not None and (kinds is None or any(k in s.joins.kinds for k in kinds))
        )
    )


def alone_error(name: str) -> str:
    spec = METHODS[name]
    return (
        f"method {name!r} is a modifier, not a method on its own; put it after a base that trains, e.g. "
        f"{'finetune' if 'any' in spec.joins.kinds else 'ewc'}+{name}"
    )


def parse(name: str) -> tuple[str, ...]:
    """The pieces of a chain, checked (a one-line ValueError names the piece and the fix)."""
    parts = tuple(p.strip() for p in name.split("+"))
    if any(not p for p in parts):
        raise ValueError(f"method {name!r}: empty piece in the chain; write base+modifier, e.g. ewc+gu")
    for p in parts:
        if p not in METHODS:
            raise ValueError(
                f"method {name!r}: unknown piece {p!r}; a chain is a base (a method of jaxcl list) then "
                f"modifiers ({', '.join(modifiers())})"
            )
    if len(set(parts)) < len(parts):
        raise ValueError(f"method {name!r}: a piece is repeated; name each piece once")
    base, rest = parts[0], parts[1:]
    if not METHODS[base].alone:
        raise ValueError(
            f"method {name!r}: {base} is a modifier and cannot come first; start the chain with a base that "
            f"trains, e.g. {'finetune' if 'any' in METHODS[base].joins.kinds else 'ewc'}+{base}"
        )
    if "lr" not in METHODS[base].hparams:
        raise ValueError(
            f"method {name!r}: the base {base!r} does not train (an edit); a chain's base must train"
        )
    bk = METHODS[base].kind
    for p in rest:
        joins = METHODS[p].joins
        if joins is None:
            raise ValueError(
                f"method {name!r}: {p} is a whole method (its own loss and optimizer), so it can only be a "
                f"chain's base, and {base} already is; later pieces are modifiers: {', '.join(modifiers())}"
            )
        if bk not in joins.kinds:
            raise ValueError(
                f"method {name!r}: {p} joins bases of kind {', '.join(joins.kinds)}, and {base} is {bk!r}"
                + ("; GRPO has its own KL term (grpo.beta)" if p == "kl" and bk == "rl" else "")
            )
        for pattern, why in joins.conflicts:
            clash = [q for q in parts if q != p and fnmatch.fnmatch(q, pattern)]
            if clash:
                raise ValueError(f"method {name!r}: {p} cannot join {clash[0]}: {why}")
    return parts


def _own(spec: MethodSpec, base: bool, base_name: str = "") -> tuple[dict, dict]:
    """The hparams and options a piece brings to a composite (a modifier: not its optimizer's;
    its defaults for the chain's base ``base_name``, :attr:`Joins.base_defaults`)."""
    if base:
        return dict(spec.hparams), dict(spec.options)
    hp = {k: h for k, h in spec.hparams.items() if k != "lr"}
    for pattern, k, v in spec.joins.base_defaults if spec.joins else ():
        if k in hp and fnmatch.fnmatchcase(base_name, pattern):
            hp[k] = dataclasses.replace(hp[k], default=v)
    return hp, {k: v for k, v in spec.options.items() if k not in OPTIMIZER_OPTIONS}


def _prefix(p: str, i: int) -> str:
    return "" if i == 0 else p + "."


def _sub(d: dict, pre: str) -> dict:
    if not pre:
        return {k: v for k, v in d.items() if "." not in k}
    return {k[len(pre) :]: v for k, v in d.items() if k.startswith(pre)}


@dataclasses.dataclass(frozen=True)
class Composite(MethodSpec):
    """The spec of a chain; ``split`` checks each piece's section with the piece's own rules."""

    pieces: tuple[str, ...] = ()

    def split(self, section: dict) -> tuple[dict, dict]:
        unknown = set(section) - set(self.hparams) - set(self.options)
        if unknown:
            raise ValueError(
                f"method {self.name!r} has no setting(s) {sorted(unknown)}; valid: {', '.join(sorted(self.defaults()))}"
            )
        hp, opts = {}, {}
        for i, p in enumerate(self.pieces):
            pre = _prefix(p, i)
            sub = _sub(section, pre)
            h, o = METHODS[p].split(sub)
            own_h, own_o = _own(METHODS[p], i == 0, self.pieces[0])
            h = {k: v if k in sub else own_h[k].default for k, v in h.items() if k in own_h}
            hp.update({pre + k: v for k, v in h.items()})
            opts.update({pre + k: v for k, v in o.items() if k in own_o})
        return hp, opts


def settings_section(cfg: dict, name: str) -> dict:
    """A chain's settings gathered from its pieces' config sections (the base's under their own
    names, a modifier's as ``<piece>.<name>``)."""
    out = {}
    parts = parse(name)
    for i, p in enumerate(parts):
        own_h, own_o = _own(METHODS[p], i == 0, parts[0])
        out.update({_prefix(p, i) + k: v for k, v in cfg.get(p, {}).items() if k in own_h or k in own_o})
    return out


@functools.cache
def _compose(name: str) -> Composite:
    parts = parse(name)
    specs = [METHODS[p] for p in parts]
    hparams, options, choices = {}, {}, {}
    for i, (p, s) in enumerate(zip(parts, specs)):
        pre = _prefix(p, i)
        own_h, own_o = _own(s, i == 0, parts[0])
        hparams.update({pre + k: h for k, h in own_h.items()})
        options.update({pre + k: v for k, v in own_o.items()})
        choices.update({pre + k: v for k, v in s.choices.items() if k in own_o})

    def build(model, hp, params_like, **opts):
        method = specs[0].build(model, _sub(hp, ""), params_like, **_sub(opts, ""))
        mods = []
        for i, (p, s) in enumerate(zip(parts[1:], specs[1:]), 1):
            pre = _prefix(p, i)
            mods.append(s.joins.build(model, _sub(hp, pre), params_like, **_sub(opts, pre)))
        rows = [bool(s.joins and s.joins.rows) for s in specs]
        return combine(method, mods, rows, [_sub_hp(_prefix(p, i)) for i, p in enumerate(parts)])

    paper = "; ".join(dict.fromkeys(s.paper for s in specs if s.paper))
    return Composite(
        name="+".join(parts),
        build=build,
        hparams=hparams,
        options=options,
        summary=" + ".join(f"{p} ({s.summary})" for p, s in zip(parts, specs)),
        kind=specs[0].kind,
        paper=paper,
        choices=choices,
        pieces=parts,
    )


def _sub_hp(pre: str) -> Callable:
    return lambda hp: _sub(hp, pre)


def compose(name: str, kind: str | None = None) -> MethodSpec:
    """The spec of the chain ``name`` (``a+b+...``), checked against ``kind`` when given."""
    spec = _compose("+".join(p.strip() for p in name.split("+")))
    if kind is not None and not spec.applies_to(kind):
        raise ValueError(
            f"method {name!r}: its base {spec.pieces[0]} is a {spec.kind!r} method, not one for {kind!r} problems"
        )
    return spec


def combine(base: Method, mods: list[Modifier], rows: list[bool], hp_of: list[Callable]) -> Method:
    """The :class:`Method` of a base and its modifiers, by the rules of the module docstring
    (``rows[i]``: piece ``i``'s data transform replaces rows; ``hp_of[i]``: piece ``i``'s
    hyperparameters from the chain's)."""
    n = 1 + len(mods)
    datas = [base.data] + [m.data for m in mods]
    txs = [m.tx for m in mods]
    cons = [base.consolidate] + [m.consolidate for m in mods]

    loss = base.loss_fn
    for m in mods:
        if m.wrap is not None:
            loss = m.wrap(loss)

    # gradient level: the modifiers' transforms, then the base's; opt_slot[i]: piece i's index
    chained = [i for i in range(1, n) if txs[i - 1] is not None]
    opt_slot = {i: j for j, i in enumerate(chained)}
    if chained:
        opt_slot[0] = len(chained)
        tx = optax.chain(*(txs[i - 1] for i in chained), base.tx)
    else:
        opt_slot[0] = None
        tx = base.tx

    # data level: replay (rows) first, then the rest; data_slot[i]: piece i's index in the chain
    with_data = [i for i in range(n) if datas[i] is not None]
    order = [i for i in with_data if rows[i]] + [i for i in with_data if not rows[i]]
    if len(order) > 1:
        data = chain_data(*(datas[i] for i in order))
        data_slot = {i: j for j, i in enumerate(order)}
    else:
        data = datas[order[0]] if order else None
        data_slot = {i: None for i in order}

    def get(tree, slot):
        return tree if slot is None else tree[slot]

    def put(tree, slot, value):
        return value if slot is None else tuple(value if j == slot else t for j, t in enumerate(tree))

    extras = [base.extra_args] + [m.extra_args for m in mods]
    extra_args = None
    if any(e is not None for e in extras):

        def extra_args(params, batch, key):
            out = {}
            for i, e in enumerate(extras):
                if e is None:
                    continue
                got = e(params, batch, key if i == 0 else jax.random.fold_in(key, i))
                twice = set(got) & set(out)
                if twice:
                    raise ValueError(f"two pieces of the chain give the extra arg(s) {sorted(twice)}")
                out.update(got)
            return out

    consolidate = None
    if any(c is not None for c in cons):

        def consolidate(state, batch, key):
            for i, c in enumerate(cons):
                if c is None:
                    continue
                ds, os = data_slot.get(i, "none"), opt_slot.get(i, "none")
                view = state.replace(
                    data_state=() if ds == "none" else get(state.data_state, ds),
                    opt_state=() if os == "none" else get(state.opt_state, os),
                )
                k = key if key is None or i == 0 else jax.random.fold_in(key, i)
                new = c(view, batch, k)
                state = new.replace(
                    data_state=state.data_state
                    if ds == "none"
                    else put(state.data_state, ds, new.data_state),
                    opt_state=state.opt_state if os == "none" else put(state.opt_state, os, new.opt_state),
                )
            return state

    edits = [(base.edit, hp_of[0])] + [(m.edit, hp_of[i + 1]) for i, m in enumerate(mods)]
    edit = base.edit
    if any(e is not None for e, _ in edits[1:]):

        def edit(params, data_, hp, key):
            for i, (e, sub) in enumerate(edits):
                if e is not None:
                    params = e(
                        params,
                        data_,
                        hp if i == 0 else sub(hp),
                        key if i == 0 else jax.random.fold_in(key, i),
                    )
            return params

    return base._replace(
        loss_fn=loss, tx=tx, data=data, extra_args=extra_args, consolidate=consolidate, edit=edit
    )
