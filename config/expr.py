"""The rules' expression language: a small, safe subset of Python expressions, compiled once.

Invariants:
- Text is parsed with `ast` and every node is checked against a whitelist before anything is
  compiled; nothing outside the whitelist reaches `compile`, and the compiled code runs with empty
  builtins, so a pushed configuration cannot import, reach attributes, loop or define functions.
- Nothing can allocate or compute without bound: the source, node count and nesting depth are
  bounded, text exists only as the argument of `point("dev/p")`, every number is a float (so
  `**` overflows instead of building huge integers), and an exponent must be a small constant.
- Errors name the column in the expression; the caller adds the config path.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

MAX_SOURCE = 500  # characters; bounds the parser's own work too
MAX_NODES = 200
MAX_DEPTH = 12
MAX_TEXT = 129  # a point id: 64 + "/" + 64
MAX_EXPONENT = 64.0
MAX_ARGS = 8

# The names an expression sees: the reading being processed, in the units of the step before.
VARIABLES = ("value", "prev", "dt", "ts")
CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_CONSTANT = 1e15
_POINT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "ceil": math.ceil,
    "clamp": _clamp,
    "exp": math.exp,
    "floor": math.floor,
    "log": math.log,
    "log10": math.log10,
    "max": max,
    "min": min,
    "round": round,
    "sqrt": math.sqrt,
}
# (fewest, most) arguments; point() is handled on its own.
_ARITY = {
    "abs": (1, 1),
    "ceil": (1, 1),
    "clamp": (3, 3),
    "exp": (1, 1),
    "floor": (1, 1),
    "log": (1, 2),
    "log10": (1, 1),
    "max": (2, MAX_ARGS),
    "min": (2, MAX_ARGS),
    "round": (1, 2),
    "sqrt": (1, 1),
}
_ALLOWED_HINT = (
    'use numbers, value, prev, dt, ts, pi, e, point("dev/p"), + - * / // % **, comparisons, '
    f"and, or, not, x if c else y, and {', '.join(sorted(_ARITY))}"
)

_REFUSED: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "subscripts are not allowed",
    ast.Lambda: "lambdas are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.List: "lists are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.Set: "sets are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.Starred: "unpacking (*) is not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Slice: "slices are not allowed",
}
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_UNARY = (ast.UAdd, ast.USub, ast.Not)


class ExprError(Exception):
    """An expression is refused; `column` is 1-based within its line."""

    def __init__(self, line: int, column: int, problem: str, fix: str = _ALLOWED_HINT) -> None:
        self.line, self.column, self.problem, self.fix = line, column, problem, fix
        where = f"column {column}" if line == 1 else f"line {line}, column {column}"
        super().__init__(f"{where}: {problem}")


class NoValue(LookupError):
    """point("dev/p") was asked for before that point had a numeric value."""


@dataclass(frozen=True, slots=True)
class Expr:
    """A validated expression. Equal when the source is equal (that is its identity on reload)."""

    source: str
    points: tuple[str, ...]  # the other points it reads with point("dev/p")
    code: CodeType = field(compare=False, repr=False)

    def bind(self, point: Callable[[str], float]) -> Callable[[float, float, float, float], Any]:
        """A function of (value, prev, dt, ts); `point` returns another point's last value."""
        scope: dict[str, Any] = {"__builtins__": {}, "_point": point, **FUNCTIONS}
        # Safe: the code was built only from whitelisted nodes, and builtins are empty.
        fn: Callable[[float, float, float, float], Any] = eval(self.code, scope)
        return fn


def compile_expr(source: str, variables: tuple[str, ...] = VARIABLES) -> Expr:
    """Validate and compile; raises ExprError naming the column of the first refused part.

    `variables` are the names the expression may read, in the order `bind`'s function takes
    them (the rules' four by default; `gatewayd fleet --require` passes state fields)."""
    if len(source) > MAX_SOURCE:
        raise ExprError(
            1, MAX_SOURCE + 1, f"longer than {MAX_SOURCE} characters", "split it into steps"
        )
    if not source.strip():
        raise ExprError(1, 1, "empty", "write an expression such as value * 0.1")
    try:
        # In parentheses, an expression may span lines and start with blanks, as TOML allows.
        tree = ast.parse(f"({source}\n)", mode="eval")
    except SyntaxError as exc:
        lines = source.splitlines() or [""]
        line, col = exc.lineno or 1, (exc.offset or 1) - (exc.lineno == 1)
        if line > len(lines):  # the end of the text: point just past it
            line, col = len(lines), len(lines[-1]) + 1
        raise ExprError(
            line,
            max(1, col),
            f"not a valid expression: {exc.msg}",
            "check the syntax (Python expression syntax)",
        ) from None
    except (RecursionError, MemoryError, ValueError):
        raise ExprError(1, 1, "cannot be parsed", "simplify it") from None
    try:  # "1) + (2" parses inside the parentheses above, but not inside brackets
        ast.parse(f"[{source}\n]", mode="eval")
    except SyntaxError:
        raise ExprError(1, 1, "unbalanced parentheses", "check ( and )") from None
    check = _Checker(source, variables)
    check.visit_node(tree.body, 1)
    body = _Rewriter().visit(tree.body)
    args = [ast.arg(arg=name) for name in variables]
    lam = ast.Lambda(
        args=ast.arguments(posonlyargs=[], args=args, kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=body,
    )
    code = compile(ast.fix_missing_locations(ast.Expression(body=lam)), "<rule expr>", "eval")
    return Expr(source, tuple(dict.fromkeys(check.points)), code)


class _Checker:
    def __init__(self, source: str, variables: tuple[str, ...]) -> None:
        self.variables = variables
        self.lines = source.splitlines() or [""]
        self.nodes = 0
        self.points: list[str] = []

    def fail(self, node: ast.AST, problem: str, fix: str = _ALLOWED_HINT) -> ExprError:
        line = getattr(node, "lineno", 1)
        col = getattr(node, "col_offset", 0)
        if isinstance(node, ast.Attribute) and node.end_col_offset is not None:
            col = node.end_col_offset - len(node.attr)  # point at the attribute's name
        text = ("(" if line == 1 else "") + (
            self.lines[line - 1] if line <= len(self.lines) else ""
        )
        column = len(text.encode()[:col].decode(errors="ignore")) + (line != 1)  # UTF-8 offsets
        return ExprError(line, column, problem, fix)

    def visit_node(self, node: ast.AST, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(node, f"more than {MAX_NODES} parts", "split it into steps")
        if depth > MAX_DEPTH:
            raise self.fail(node, f"nested more than {MAX_DEPTH} levels deep", "simplify it")
        refused = _REFUSED.get(type(node))
        if refused is not None:
            raise self.fail(node, refused)
        if isinstance(node, ast.Constant):
            self.constant(node)
        elif isinstance(node, ast.Name):
            if node.id not in self.variables and node.id not in CONSTANTS:
                raise self.fail(node, f"unknown name {node.id!r}")
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, _BINOPS):
                raise self.fail(node, f"operator {_op_name(node.op)} is not allowed")
            if isinstance(node.op, ast.Pow):
                self.exponent(node.right)
            self.visit_node(node.left, depth + 1)
            self.visit_node(node.right, depth + 1)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, _UNARY):
                raise self.fail(node, f"operator {_op_name(node.op)} is not allowed")
            self.visit_node(node.operand, depth + 1)
        elif isinstance(node, ast.BoolOp):
            for v in node.values:
                self.visit_node(v, depth + 1)
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if not isinstance(op, _CMPOPS):
                    raise self.fail(node, f"comparison {_op_name(op)} is not allowed")
            for v in (node.left, *node.comparators):
                self.visit_node(v, depth + 1)
        elif isinstance(node, ast.IfExp):
            for v in (node.test, node.body, node.orelse):
                self.visit_node(v, depth + 1)
        elif isinstance(node, ast.Call):
            self.call(node, depth)
        else:
            raise self.fail(node, f"{type(node).__name__} is not allowed")

    def constant(self, node: ast.Constant) -> None:
        v = node.value
        if isinstance(v, str):
            raise self.fail(node, 'text is only allowed as the point id in point("dev/p")')
        if v is None or not isinstance(v, int | float) or isinstance(v, complex):
            raise self.fail(node, f"{v!r} is not a number")
        # 1e999 is inf and 10**400 has no float: both would break the compiled expression.
        if not -MAX_CONSTANT <= v <= MAX_CONSTANT:
            raise self.fail(
                node, "a constant beyond ±1e15 is not allowed", "use a finite, smaller constant"
            )

    def exponent(self, node: ast.AST) -> None:
        signed = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd)
        inner = node.operand if signed else node  # type: ignore[attr-defined]
        v = inner.value if isinstance(inner, ast.Constant) else None
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise self.fail(node, "an exponent must be a number constant", "write e.g. value ** 2")
        if abs(v) > MAX_EXPONENT:
            raise self.fail(
                node,
                f"exponent {v} is larger than {MAX_EXPONENT:g}",
                "use a smaller exponent, or exp() and log()",
            )

    def call(self, node: ast.Call, depth: int) -> None:
        if not isinstance(node.func, ast.Name):
            self.visit_node(node.func, depth + 1)  # raises: attribute, subscript, ...
            raise self.fail(node, "only named functions can be called")
        name = node.func.id
        if node.keywords:
            raise self.fail(node.keywords[0], f"{name}() takes no keyword arguments")
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise self.fail(a, _REFUSED[ast.Starred])
        if name == "point":
            self.point_call(node)
            return
        if name not in _ARITY:
            raise self.fail(node, f"unknown function {name!r}")
        digits = node.args[1:] if name == "round" else []
        for a in node.args:
            if a not in digits:
                self.visit_node(a, depth + 1)
        lo, hi = _ARITY[name]
        if not lo <= len(node.args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise self.fail(node, f"{name}() takes {want} arguments, got {len(node.args)}")
        for d in digits:
            if not (isinstance(d, ast.Constant) and type(d.value) is int and -12 <= d.value <= 12):
                raise self.fail(d, "round()'s digits must be an integer constant", "use -12 to 12")

    def point_call(self, node: ast.Call) -> None:
        args = node.args
        if len(args) != 1 or not (
            isinstance(args[0], ast.Constant) and isinstance(args[0].value, str)
        ):
            raise self.fail(node, 'point() takes one point id in quotes, e.g. point("dev/p")')
        pid = args[0].value
        if len(pid) > MAX_TEXT or not _POINT_ID.fullmatch(pid):
            raise self.fail(args[0], f"{pid[:40]!r} is not a point id", 'write "device/point"')
        self.points.append(pid)


class _Rewriter(ast.NodeTransformer):
    """After checking: numbers become floats, pi and e constants, point() the engine's lookup."""

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if type(node.value) is int:
            return ast.copy_location(ast.Constant(float(node.value)), node)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in CONSTANTS:
            return ast.copy_location(ast.Constant(CONSTANTS[node.id]), node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        assert isinstance(node.func, ast.Name)
        if node.func.id == "point":
            node.func = ast.copy_location(ast.Name("_point", ast.Load()), node.func)
            return node
        if node.func.id == "round" and len(node.args) == 2:
            node.args[0] = self.visit(node.args[0])  # keep the digits an int
            return node
        self.generic_visit(node)
        return node


def _op_name(op: ast.AST) -> str:
    return {
        ast.BitAnd: "&",
        ast.BitOr: "|",
        ast.BitXor: "^",
        ast.LShift: "<<",
        ast.RShift: ">>",
        ast.Invert: "~",
        ast.MatMult: "@",
        ast.Is: "is",
        ast.IsNot: "is not",
        ast.In: "in",
        ast.NotIn: "not in",
    }.get(type(op), type(op).__name__)


__all__ = ["Expr", "ExprError", "NoValue", "compile_expr"]
