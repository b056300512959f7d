"""Expressions of derived features and computed fields: a small safe language.

The guide is ``docs/features.md`` (derived features, computed fields).

An expression is Python syntax, parsed with ``ast`` and accepted only if every node is in a
short whitelist: numbers, strings, ``True``/``False``/``None``, names (of features or fields),
``+ - * / // % **``, unary ``-``/``+``, comparisons (chains too), ``and``/``or``/``not``,
``a if c else b``, and calls of the functions of ``FUNCTIONS`` by their bare name. Everything
else (attributes, subscripts, lambdas, comprehensions, keyword arguments, names that start
with ``__``) is refused when the spec loads, with a reason. The accepted tree is then
translated into Python source of our own, where every name is a positional argument and every
constant a bound value: the user's text is never evaluated.

Values:
- a ``None`` operand makes an operator or a function (except ``coalesce``) give ``None``, as
  a missing field does: the derived value has no value yet;
- a condition that is ``None`` takes the ``else`` branch (as SQL's ``CASE``), and ``and``/``or``
  give ``None`` when the operand that decides is ``None``;
- a result without a finite value (division or modulo by zero, ``log(0)``, ``sqrt(-1)``, an
  overflow, NaN or an infinity) is ``None``;
- arithmetic and the numeric functions take numbers (``int``, ``float``; not ``bool``, not
  strings): anything else is a ``FeatureValueError`` for that feature and that event.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

from .._exceptions import FeatureValueError

__all__ = ["FUNCTIONS", "MAX_EXPRESSION_LENGTH", "Expression", "ExpressionError"]

#: The longest expression accepted, in characters.
MAX_EXPRESSION_LENGTH = 2000
#: Nodes an expression may hold at most (and nesting depth at most).
_MAX_NODES = 500
_MAX_DEPTH = 50
#: the ``field`` of the errors an expression raises (it reads features or fields by name)
_FIELD = "expression"


class ExpressionError(ValueError):
    """An expression that cannot be accepted: ``str(error)`` is the reason."""


class _Undefined(Exception):
    """A result without a finite value: the expression's value is None."""


def _number(value: Any, what: str) -> Any:
    cls = value.__class__
    if cls is int or cls is float:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise FeatureValueError(
        f"{what} needs numbers, got {type(value).__name__} {value!r:.60}", field=_FIELD
    )


#: the ints an expression gives: 64-bit signed, as everywhere else in the runtime (beyond, the
#: value is None; else a chain of products could grow an int without bound, and its time too)
_INT_LOW, _INT_HIGH = -(2**63), 2**63 - 1
#: the digits ``round`` takes (``round(n, -10**8)`` computes ``10 ** 10**8``)
_ROUND_DIGITS = 400


def _finite(value: Any) -> Any:
    cls = value.__class__
    if cls is float:
        if not -math.inf < value < math.inf:
            raise _Undefined
    elif cls is int and not _INT_LOW <= value <= _INT_HIGH:
        raise _Undefined
    return value


def _arith(symbol: str, op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    what = f"'{symbol}'"

    def apply(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        a, b = _number(a, what), _number(b, what)
        try:
            return _finite(op(a, b))
        except (ZeroDivisionError, OverflowError, ValueError):
            raise _Undefined from None

    return apply


def _pow(a: float, b: float) -> float:
    # always a float: an int ** int could be a huge number (10 ** 10 ** 9)
    return math.pow(a, b)


def _compare(op: Callable[[Any, Any], Any], symbol: str) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        try:
            return op(a, b)
        except TypeError:
            raise FeatureValueError(
                f"cannot compare {type(a).__name__} {a!r:.60} {symbol} "
                f"{type(b).__name__} {b!r:.60}",
                field=_FIELD,
            ) from None

    return apply


def _truth(value: Any) -> bool:
    return value is not None and bool(value)


def _and(a: Any, rest: Callable[[], Any]) -> Any:
    if a is None:
        return None
    if not a:
        return False
    b = rest()
    return None if b is None else bool(b)


def _or(a: Any, rest: Callable[[], Any]) -> Any:
    if a is None:
        return None
    if a:
        return True
    b = rest()
    return None if b is None else bool(b)


def _not(a: Any) -> Any:
    return None if a is None else not a


def _neg(a: Any) -> Any:
    return None if a is None else -_number(a, "'-'")


def _pos(a: Any) -> Any:
    return None if a is None else _number(a, "'+'")


def _numeric(name: str, op: Callable[..., Any]) -> Callable[..., Any]:
    what = f"{name}()"

    def apply(*args: Any) -> Any:
        for arg in args:
            if arg is None:
                return None
        args = tuple(_number(arg, what) for arg in args)
        try:
            return _finite(op(*args))
        except (ZeroDivisionError, OverflowError, ValueError):
            raise _Undefined from None

    return apply


def _log(x: float, base: float | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


def _round(x: float, digits: int | None = None) -> float:
    if digits is not None and (digits.__class__ is not int):
        raise FeatureValueError(
            f"round() needs an int for digits, got {digits!r:.60}", field=_FIELD
        )
    if digits is not None and not -_ROUND_DIGITS <= digits <= _ROUND_DIGITS:
        raise _Undefined
    rounded: float = _finite(round(x) if digits is None else round(x, digits))
    return rounded


def _clip(x: float, low: float, high: float) -> float:
    return low if x < low else high if x > high else x


def _coalesce(*args: Any) -> Any:
    for arg in args:
        if arg is not None:
            return arg
    return None


#: The functions an expression may call: name -> (fewest, most arguments; None: any).
FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "abs": (1, 1),
    "min": (2, None),
    "max": (2, None),
    "log": (1, 2),
    "log1p": (1, 1),
    "exp": (1, 1),
    "sqrt": (1, 1),
    "clip": (3, 3),
    "round": (1, 2),
    "coalesce": (1, None),
}

_RUNTIME: dict[str, Any] = {
    "_f_abs": _numeric("abs", abs),
    "_f_min": _numeric("min", min),
    "_f_max": _numeric("max", max),
    "_f_log": _numeric("log", _log),
    "_f_log1p": _numeric("log1p", math.log1p),
    "_f_exp": _numeric("exp", math.exp),
    "_f_sqrt": _numeric("sqrt", math.sqrt),
    "_f_clip": _numeric("clip", _clip),
    "_f_round": _numeric("round", _round),
    "_f_coalesce": _coalesce,
    "_add": _arith("+", lambda a, b: a + b),
    "_sub": _arith("-", lambda a, b: a - b),
    "_mul": _arith("*", lambda a, b: a * b),
    "_div": _arith("/", lambda a, b: a / b),
    "_floordiv": _arith("//", lambda a, b: a // b),
    "_mod": _arith("%", lambda a, b: a % b),
    "_pow": _arith("**", _pow),
    "_eq": _compare(lambda a, b: a == b, "=="),
    "_ne": _compare(lambda a, b: a != b, "!="),
    "_lt": _compare(lambda a, b: a < b, "<"),
    "_le": _compare(lambda a, b: a <= b, "<="),
    "_gt": _compare(lambda a, b: a > b, ">"),
    "_ge": _compare(lambda a, b: a >= b, ">="),
    "_truth": _truth,
    "_and": _and,
    "_or": _or,
    "_not": _not,
    "_neg": _neg,
    "_pos": _pos,
    "_Undefined": _Undefined,
}

_BINOPS: dict[type[ast.operator], tuple[str, str]] = {
    ast.Add: ("_add", "+"),
    ast.Sub: ("_sub", "-"),
    ast.Mult: ("_mul", "*"),
    ast.Div: ("_div", "/"),
    ast.FloorDiv: ("_floordiv", "//"),
    ast.Mod: ("_mod", "%"),
    ast.Pow: ("_pow", "**"),
}
_CMPOPS: dict[type[ast.cmpop], str] = {
    ast.Eq: "_eq",
    ast.NotEq: "_ne",
    ast.Lt: "_lt",
    ast.LtE: "_le",
    ast.Gt: "_gt",
    ast.GtE: "_ge",
}
_DESCRIBED: dict[type[ast.AST], str] = {
    ast.Attribute: "attributes ('.')",
    ast.Subscript: "subscripts ('[...]')",
    ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.NamedExpr: "assignments (':=')",
    ast.Starred: "'*' arguments",
    ast.JoinedStr: "f-strings",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}


class Expression:
    """A parsed, checked and compiled expression.

    ``names`` are the names it reads, in order of first use; ``evaluate(*values)`` takes their
    values in that order and returns the result (None without one). ``operations`` counts its
    operators, comparisons, conditions and calls (at least 1): what the estimator costs.

    Raises:
        ExpressionError: the text is not an expression of the language (the reason says what).
    """

    __slots__ = ("_evaluate", "names", "operations", "source", "text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise ExpressionError(f"expected an expression (a string), got {type(text).__name__}")
        if not text.strip():
            raise ExpressionError("an empty expression")
        if len(text) > MAX_EXPRESSION_LENGTH:
            raise ExpressionError(f"longer than {MAX_EXPRESSION_LENGTH} characters")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"not a valid expression: {exc.msg}") from None
        except (RecursionError, MemoryError, ValueError):
            raise ExpressionError("not a valid expression: nested too deeply") from None
        self.text = text
        self.names: tuple[str, ...] = ()
        translator = _Translator()
        code = translator.expression(tree.body, 0)
        self.names = tuple(translator.names)
        self.operations = max(1, translator.operations)
        args = ", ".join(f"_a{i}" for i in range(len(self.names)))
        self.source = (
            f"def _expression({args}):\n"
            f"    try:\n"
            f"        return {code}\n"
            f"    except _Undefined:\n"
            f"        return None\n"
        )
        namespace: dict[str, Any] = {"__builtins__": {}, **_RUNTIME, **translator.constants}
        exec(compile(self.source, "<featurist expression>", "exec"), namespace)
        self._evaluate: Callable[..., Any] = namespace["_expression"]

    def evaluate(self, *values: Any) -> Any:
        """The expression's value for the values of ``names``, in order.

        Raises:
            FeatureValueError: an operand of the wrong type (a string in arithmetic, a string
                compared with a number).
        """
        return self._evaluate(*values)

    @property
    def function(self) -> Callable[..., Any]:
        """``evaluate`` as a plain function, for compiled code to call directly."""
        return self._evaluate

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


class _Translator:
    """The accepted tree as Python source over ``_a<i>`` arguments and ``_k<i>`` constants."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.constants: dict[str, Any] = {}
        self.nodes = 0
        self.operations = 0

    def constant(self, value: Any) -> str:
        name = f"_k{len(self.constants)}"
        self.constants[name] = value
        return name

    def name(self, identifier: str) -> str:
        if identifier.startswith("__"):
            raise ExpressionError(f"names that start with '__' are not allowed: {identifier!r}")
        if identifier in ("True", "False", "None"):  # pragma: no cover - parsed as constants
            raise ExpressionError(f"not a name: {identifier!r}")
        if identifier not in self.names:
            self.names.append(identifier)
        return f"_a{self.names.index(identifier)}"

    def expression(self, node: ast.expr, depth: int) -> str:
        self.nodes += 1
        if self.nodes > _MAX_NODES or depth > _MAX_DEPTH:
            raise ExpressionError(f"too large (at most {_MAX_NODES} parts, nested {_MAX_DEPTH})")
        down = depth + 1
        if isinstance(node, ast.BinOp | ast.UnaryOp | ast.BoolOp | ast.IfExp | ast.Call):
            self.operations += 1
        elif isinstance(node, ast.Compare):
            self.operations += len(node.ops)
        if isinstance(node, ast.Constant):
            value = node.value
            if value is None or isinstance(value, bool | int | float | str):
                return self.constant(value)
            raise ExpressionError(f"constants of type {type(value).__name__} are not allowed")
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise ExpressionError(f"operator {type(node.op).__name__} is not allowed")
            for side in (node.left, node.right):
                _check_numeric_constant(side, f"'{op[1]}'")
            return (
                f"{op[0]}({self.expression(node.left, down)}, {self.expression(node.right, down)})"
            )
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return f"_not({self.expression(node.operand, down)})"
            if isinstance(node.op, ast.USub | ast.UAdd):
                symbol = "-" if isinstance(node.op, ast.USub) else "+"
                _check_numeric_constant(node.operand, f"'{symbol}'")
                helper = "_neg" if symbol == "-" else "_pos"
                return f"{helper}({self.expression(node.operand, down)})"
            raise ExpressionError("operator '~' is not allowed")
        if isinstance(node, ast.BoolOp):
            helper = "_and" if isinstance(node.op, ast.And) else "_or"
            code = self.expression(node.values[-1], down)
            for operand in reversed(node.values[:-1]):
                code = f"{helper}({self.expression(operand, down)}, lambda: {code})"
            return code
        if isinstance(node, ast.Compare):
            return self.comparison(node, down)
        if isinstance(node, ast.IfExp):
            body = self.expression(node.body, down)  # names in the order they are written
            test = self.expression(node.test, down)
            orelse = self.expression(node.orelse, down)
            return f"({body} if _truth({test}) else {orelse})"
        if isinstance(node, ast.Call):
            return self.call(node, down)
        described = _DESCRIBED.get(type(node), type(node).__name__)
        raise ExpressionError(f"{described} are not allowed in an expression")

    def comparison(self, node: ast.Compare, down: int) -> str:
        parts = []
        left = self.expression(node.left, down)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            helper = _CMPOPS.get(type(op))
            if helper is None:
                shown = {ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
                raise ExpressionError(
                    f"operator {shown.get(type(op), type(op).__name__)!r} is not allowed "
                    "(use ==, !=, <, <=, >, >=)"
                )
            right = self.expression(right_node, down)
            parts.append(f"{helper}({left}, {right})")
            left = right
        code = parts[-1]
        for part in reversed(parts[:-1]):  # a < b < c: (a < b) and (b < c)
            code = f"_and({part}, lambda: {code})"
        return code

    def call(self, node: ast.Call, down: int) -> str:
        if not isinstance(node.func, ast.Name):
            raise ExpressionError("only the built-in functions can be called, by their name")
        name = node.func.id
        arity = FUNCTIONS.get(name)
        if arity is None:
            raise ExpressionError(
                f"unknown function {name!r} (known: {', '.join(sorted(FUNCTIONS))})"
            )
        if node.keywords:
            raise ExpressionError(f"{name}() takes no keyword arguments")
        low, high = arity
        count = len(node.args)
        if count < low or (high is not None and count > high):
            wanted = str(low) if low == high else f"{low}+" if high is None else f"{low} to {high}"
            raise ExpressionError(f"{name}() takes {wanted} arguments, got {count}")
        if name != "coalesce":
            for arg in node.args:
                _check_numeric_constant(arg, f"{name}()")
        args = ", ".join(self.expression(arg, down) for arg in node.args)
        return f"_f_{name}({args})"


def _check_numeric_constant(node: ast.expr, what: str) -> None:
    """A constant operand that can never be a number is a type error found at load time."""
    if isinstance(node, ast.Constant) and (
        isinstance(node.value, str | bool) or node.value is None
    ):
        raise ExpressionError(f"{what} needs numbers, got {node.value!r}")
