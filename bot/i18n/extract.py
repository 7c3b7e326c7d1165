"""Which messages the code uses: an AST scan of ``bot/`` and ``cogs/``, and the catalogs kept in step.

A message is the literal first text argument of: :func:`bot.i18n.t` / ``tn`` / ``tp`` / ``tnp`` (after
the locale), ``msg`` / ``nmsg`` / ``pmsg``, ``N_``, discord.py's ``locale_str``, and the constructor of
any :class:`bot.errors.PaletteError` subclass. A non-literal there (an f-string, a variable) is reported
by :func:`problems`, unless it is a value passed through (a name, an attribute: an existing message).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("bot", "cogs")

#: function name -> (index of the first text argument, whether it is plural, whether it has a context)
FUNCTIONS: dict[str, tuple[int, bool, bool]] = {
    "t": (1, False, False),
    "tn": (1, True, False),
    "tp": (1, False, True),
    "tnp": (1, True, True),
    "msg": (0, False, False),
    "nmsg": (0, True, False),
    "pmsg": (0, False, True),
    "N_": (0, False, False),
    "locale_str": (0, False, False),
}


@dataclass(frozen=True)
class Message:
    id: str
    plural: str | None = None
    context: str | None = None
    where: str = ""

    @property
    def key(self) -> tuple[str | None, str]:
        return (self.context, self.id)


def source_files(root: Path = ROOT) -> Iterator[Path]:
    for top in SOURCES:
        yield from sorted((root / top).rglob("*.py"))


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def error_classes(trees: Iterable[ast.Module]) -> set[str]:
    """Names of the classes deriving (through any of the scanned files) from ``PaletteError``."""
    bases: dict[str, set[str]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases.setdefault(node.name, set()).update(n for b in node.bases if (n := _name(b)))
    found = {"PaletteError"}
    # Classes whose constructor takes something else first (QuotaExceeded(scope, ...)) are still errors,
    # but their first argument is not a message: see :func:`_message_first`.
    changed = True
    while changed:
        changed = False
        for name, parents in bases.items():
            if name not in found and parents & found:
                found.add(name)
                changed = True
    return found


def other_first(trees: Iterable[ast.Module]) -> set[str]:
    """Error classes whose ``__init__`` does not take the message first (it builds its own)."""
    out = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                        params = item.args.posonlyargs + item.args.args
                        if len(params) < 2 or params[1].arg != "message":
                            out.add(node.name)
    return out


def _literal(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def scan(root: Path = ROOT) -> tuple[list[Message], list[str]]:
    """Every message the code uses, and the problems found (non-literal message texts)."""
    parsed = [(path, ast.parse(path.read_text(encoding="utf-8"), str(path))) for path in source_files(root)]
    all_errors = error_classes(tree for _, tree in parsed)
    errors = all_errors - other_first(tree for _, tree in parsed)
    messages: list[Message] = []
    problems: list[str] = []
    for path, tree in parsed:
        rel = path.relative_to(root)
        # ``super().__init__("...")`` inside an error class gives that class's message.
        own_init: set[ast.Call] = set()
        for cls in ast.walk(tree):
            if isinstance(cls, ast.ClassDef) and cls.name in all_errors:
                for node in ast.walk(cls):
                    if (
                        isinstance(node, ast.Call)
                        and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "__init__"
                        and isinstance(node.func.value, ast.Call)
                        and _name(node.func.value.func) == "super"
                    ):
                        own_init.add(node)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _name(node.func)
            if node in own_init:
                index, plural, context = 0, False, False
            elif name in FUNCTIONS:
                index, plural, context = FUNCTIONS[name]
            elif name in errors:
                index, plural, context = 0, False, False
            else:
                continue
            where = f"{rel}:{node.lineno}"
            args = node.args
            ctx_value: str | None = None
            if context:
                if len(args) <= index:
                    continue
                ctx_value = _literal(args[index])
                if ctx_value is None:
                    problems.append(f"{where}: {name}() needs a literal context")
                    continue
                index += 1
            if len(args) <= index:
                continue  # an error with its default message
            first = args[index]
            text = _literal(first)
            if text is None:
                branches = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
                if isinstance(first, ast.BoolOp):
                    branches = list(first.values)
                if any(isinstance(b, ast.JoinedStr | ast.BinOp) for b in branches):
                    problems.append(f"{where}: {name}() is given a built-up text; use named placeholders")
                continue  # a value passed through (an existing message, None)
            plural_text = None
            if plural:
                plural_text = _literal(args[index + 1]) if len(args) > index + 1 else None
                if plural_text is None:
                    problems.append(f"{where}: {name}() needs a literal plural text")
                    continue
            messages.append(Message(text, plural_text, ctx_value, where))
    return messages, problems


def unique(messages: Iterable[Message]) -> dict[tuple[str | None, str], Message]:
    out: dict[tuple[str | None, str], Message] = {}
    for m in messages:
        out.setdefault(m.key, m)
    return out
