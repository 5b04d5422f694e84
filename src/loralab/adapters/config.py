"""`LoraConfig`: what to adapt and how, validated when it is built.

The field names follow the LoRA paper (Hu et al. 2021, §4): rank ``r`` and
``alpha`` give the scale s = alpha / r of the update ΔW = s·B·A (rsLoRA,
Kalajdzievski 2023: s = alpha / √r). ``dora=True`` adds DoRA's magnitude vector
(Liu et al. 2024). Each field maps to one PEFT ``adapter_config.json`` field;
`loralab.io.peft_format` holds that mapping.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, fields
from typing import Optional, Union

try:  # the regex parser: re._parser since Python 3.11, sre_parse before
    import re._parser as re_parser
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as re_parser

from loralab.errors import AdapterError

INITS = ("default", "gaussian", "pissa", "olora")
# inits that move the principal part of W into the adapter: W keeps a residual, ΔW is s·(B·A − B₀·A₀)
RESIDUAL_INITS = ("pissa", "olora")


@dataclass
class LoraConfig:
    """A LoRA (or DoRA) adapter specification.

    Attributes:
        r: Rank of the update, r ≥ 1. A is (r, in), B is (out, r).
        alpha: Scale numerator: s = alpha / r (or alpha / √r with ``rslora``).
        dropout: Dropout probability on the input of the LoRA path only, in [0, 1).
        targets: Which modules to adapt. None (the default): the model's attention
            query and value projections, found by name when the adapter is injected
            (``query``/``value``, ``q_proj``/``v_proj``, ``q_lin``/``v_lin``, …, GPT-2's
            ``c_attn``; `loralab.adapters.inject.DEFAULT_TARGETS`). A string is a regex that
            must match the whole module name; a list matches a module whose name equals
            an entry or ends with ``"." + entry``; ``"all-linear"`` means every Linear or
            GPT-2 Conv1D except the output head (PEFT's semantics).
        exclude: Modules never to adapt, in the same string/list form as ``targets``.
        layers: Only adapt modules inside these transformer block indices
            (the number after ``layer.``, ``layers.``, ``h.``, ``block.`` or ``blocks.``).
        rank_pattern: ``{pattern: r}`` overriding ``r`` for modules whose name
            ends with the regex ``pattern`` (first match wins).
        alpha_pattern: ``{pattern: alpha}``, like ``rank_pattern`` for ``alpha``.
        rslora: Use s = alpha / √r (rank-stabilised LoRA).
        dora: Add a trainable magnitude vector (DoRA); Linear and Conv1D only.
        init: ``"default"`` (A Kaiming-uniform, B = 0), ``"gaussian"``
            (A ~ N(0, 1/r²), B = 0), ``"pissa"`` (A, B from the top-r singular
            directions of W) or ``"olora"`` (B, A from the first r columns / rows of
            W's QR factors; Linear only). For the last two W keeps the residual
            W − s·B₀·A₀, so outputs are unchanged, and loading the adapter onto the
            original base recomputes that residual (as PEFT does).
        modules_to_save: Modules (list form, as ``targets``) that train fully and
            are saved with the adapter, e.g. a new classifier head.
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: Optional[Union[str, list[str]]] = None
    exclude: Optional[Union[str, list[str]]] = None
    layers: Optional[list[int]] = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    rslora: bool = False
    dora: bool = False
    init: str = "default"
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_int("r", self.r)
        check_alpha(self.alpha, "LoraConfig.alpha")
        _check_number("dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout}; use 0.0 for no dropout.")
        if isinstance(self.targets, tuple):
            self.targets = list(self.targets)
        _check_pattern("targets", self.targets, allow_none=True)
        _check_pattern("exclude", self.exclude, allow_none=True)
        if self.layers is not None:
            if isinstance(self.layers, int) and not isinstance(self.layers, bool):
                self.layers = [self.layers]
            if not isinstance(self.layers, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers
            ):
                raise AdapterError(f"LoraConfig.layers must be a list of non-negative ints, got {self.layers!r}.")
            self.layers = list(self.layers)
        for name, pattern in (("rank_pattern", self.rank_pattern), ("alpha_pattern", self.alpha_pattern)):
            if not isinstance(pattern, dict):
                raise AdapterError(f"LoraConfig.{name} must be a dict {{regex: value}}, got {type(pattern).__name__}.")
            regexes = sum(1 for key in pattern if isinstance(key, str) and _literal(key) is None)
            if regexes > MAX_REGEX_KEYS:
                raise AdapterError(f"LoraConfig.{name} has {regexes:,} regex keys (not module paths); at most "
                                   f"{MAX_REGEX_KEYS:,}: matching each against every module would take minutes. Give "
                                   "module paths (exact_pattern) or fewer, broader regexes.")
            for key, value in pattern.items():
                if not isinstance(key, str) or _literal(key) is None:  # a module path needs no regex check
                    _check_regex(f"{name} key", key)
                if name == "rank_pattern":
                    _check_int(f"{name}[{key!r}]", value)
                else:
                    check_alpha(value, f"LoraConfig.{name}[{key!r}]")
        for name in ("rslora", "dora"):
            if not isinstance(getattr(self, name), bool):
                raise AdapterError(f"LoraConfig.{name} must be True or False, got {getattr(self, name)!r}.")
        if self.init not in INITS:
            raise AdapterError(f"LoraConfig.init must be one of {INITS}, got {self.init!r}.")
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
        if not isinstance(self.modules_to_save, (list, tuple)) or not all(
            isinstance(m, str) and m for m in self.modules_to_save
        ):
            raise AdapterError(
                f"LoraConfig.modules_to_save must be a list of module names, got {self.modules_to_save!r}."
            )
        self.modules_to_save = list(self.modules_to_save)

    def rank_for(self, module_name: str) -> int:
        """The rank for one module: the first matching ``rank_pattern`` entry, else ``r``."""
        key = _pattern_key(self.rank_pattern, module_name)
        return self.r if key is None else int(self.rank_pattern[key])

    def alpha_for(self, module_name: str) -> float:
        """The alpha for one module: the first matching ``alpha_pattern`` entry, else ``alpha``."""
        key = _pattern_key(self.alpha_pattern, module_name)
        return self.alpha if key is None else float(self.alpha_pattern[key])

    def scaling_for(self, module_name: str) -> float:
        """s = alpha / r, or alpha / √r with rsLoRA (Kalajdzievski 2023, eq. 3)."""
        r, alpha = self.rank_for(module_name), self.alpha_for(module_name)
        return alpha / math.sqrt(r) if self.rslora else alpha / r

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_alpha(alpha, where: str, error=AdapterError) -> None:
    """alpha must be finite and > 0: 0 trains an adapter that does nothing, and a negative alpha silently
    flips the update's sign. Scaling or negating an adapter is composition, done explicitly."""
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) and 0 < alpha <= MAX_ALPHA:
        return
    raise error(f"{where} must be a number in (0, {MAX_ALPHA:g}], got {alpha!r}. The update is scaled by alpha/r (2·r is a "
                "common choice); to scale or negate a trained adapter, combine it with a weight instead: "
                "loralab compose DIR --weights -1 --out NEW.")


def exact_pattern(values: dict[str, float]) -> dict[str, float]:
    """``{module path: value}`` as ``rank_pattern``/``alpha_pattern`` keys that each match that one module
    (the path with its regex characters escaped; a key matches the end of a name at a '.')."""
    return {re.escape(path): value for path, value in values.items()}


def _pattern_key(patterns: dict, module_name: str) -> Optional[str]:
    """First key (in the pattern's order) whose regex matches the end of ``module_name`` at a name boundary
    (PEFT rule). Literal keys — module paths, as `exact_pattern` and `loralab probe` write them — are looked
    up by the name's dotted suffixes; only the others are matched as regexes, each compiled once."""
    table = _pattern_table(tuple(patterns))
    parts = module_name.split(".")
    found = [table.literal[s] for s in (".".join(parts[i:]) for i in range(len(parts))) if s in table.literal]
    found += [index for index, regex in table.regexes if regex.match(module_name)]
    return table.keys[min(found)] if found else None


class _PatternTable:
    def __init__(self, keys: tuple[str, ...]):
        self.keys, self.literal, self.regexes = keys, {}, []
        for index, key in enumerate(keys):
            plain = _literal(key)
            if plain is not None:
                self.literal.setdefault(plain, index)
            else:
                self.regexes.append((index, re.compile(rf"(.*\.)?({key})$")))


@functools.lru_cache(maxsize=64)
def _pattern_table(keys: tuple[str, ...]) -> _PatternTable:
    return _PatternTable(keys)


def _literal(key: str) -> Optional[str]:
    """The text a key matches if it is a plain (escaped) module path, else None."""
    plain = re.sub(r"\\(.)", r"\1", key)
    return plain if re.escape(plain) == key or (not re.search(r"[\\^$.|?*+()\[\]{}]", key) and plain == key) else None


MAX_ALPHA = 1e6  # alpha/r scales the update; beyond this every output overflows
MAX_PATTERN = 2000  # characters of one regex: a target or pattern key longer than this is not a module name
MAX_REGEX_KEYS = 1000  # non-literal keys of a rank/alpha pattern (literal module paths are not limited)


def _nested_repeat(parsed) -> bool:
    """Whether a parsed regex has a repetition inside a repetition — (a*)*, (.*.*)*z — whose matching time can
    grow exponentially with the name's length."""
    def walk(items, inside: bool) -> bool:
        for op, value in items:
            name = str(op)
            if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                low, high, sub = value
                if high > 1 and (inside or walk(sub, True)):
                    return True
            elif name == "SUBPATTERN":
                if walk(value[-1], inside):
                    return True
            elif name == "BRANCH":
                if any(walk(branch, inside) for branch in value[1]):
                    return True
        return False
    return walk(parsed, False)


def _check_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise AdapterError(f"LoraConfig.{name} must be an int, got {type(value).__name__} {value!r}.")
    if value <= 0:
        raise AdapterError(f"LoraConfig.{name} must be ≥ 1, got {value}; a rank of 8 or 16 is a good start.")


def _check_number(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise AdapterError(f"LoraConfig.{name} must be a finite number, got {type(value).__name__} {value!r}.")


def _check_regex(name: str, pattern: str) -> None:
    """A valid regex that matches in linear time: not too long, no repetition inside a repetition (adapter
    configs may come from untrusted files; Python's re has no time limit)."""
    if not isinstance(pattern, str):
        raise AdapterError(f"LoraConfig {name} must be a string, got {type(pattern).__name__}.")
    if len(pattern) > MAX_PATTERN:
        raise AdapterError(f"LoraConfig {name} is {len(pattern):,} characters long; a module-name regex needs far fewer "
                           f"(at most {MAX_PATTERN:,}).")
    try:
        parsed = re_parser.parse(pattern)
    except re.error as err:
        raise AdapterError(f"LoraConfig {name} {pattern!r} is not a valid regex: {err}.") from None
    if _nested_repeat(parsed):
        raise AdapterError(f"LoraConfig {name} {pattern[:60]!r} repeats a group that itself repeats (like (a*)*), "
                           "which can take exponential time to match; write it without the nesting, e.g. .*z.")


def _check_pattern(name: str, value, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, str):
        if not value:
            raise AdapterError(f"LoraConfig.{name} is an empty string; give module names like ['query', 'value'].")
        _check_regex(name, value)
        return
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return
    raise AdapterError(
        f"LoraConfig.{name} must be a regex string or a non-empty list of module names, got {value!r}."
    )
