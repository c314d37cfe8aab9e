"""One-line errors for anything a user writes: scenario files, model configs, profiles, traces."""

from __future__ import annotations

import reprlib
from pathlib import Path

import yaml
from pydantic import ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode

MERGE_TAG = "tag:yaml.org,2002:merge"


class ConfigError(ValueError):
    """A user-facing mistake; the message is one line naming the field and the fix."""


def _loc(parts: tuple) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


# bounded at every level, so showing a huge or deeply shared input costs the same as a small one
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 2


def cut(text: str, width: int) -> str:
    """`text` cut to `width` characters, ending in "..." where it was cut."""
    return text if len(text) <= width else text[: width - 3] + "..."


def short_repr(value: object, width: int = 60) -> str:
    """repr() of a user's value, cut to `width` characters without ever building the whole repr."""
    return cut(_REPR.repr(value), width)


def one_line(err: ValidationError, source: str = "", prefix: str = "") -> ConfigError:
    """Turn pydantic's multi-line report into one line per problem, joined by '; '."""
    msgs = []
    for e in err.errors(include_url=False):
        loc = _loc(tuple(e.get("loc", ())))
        if prefix:
            loc = f"{prefix}.{loc}" if loc != "(top level)" else prefix
        msg = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling (`--help` lists the fields)"
        elif e.get("type") == "missing":
            msg = "missing; add it"
        elif e.get("type") == "value_error":  # our validators' own messages say what was given and the fix
            msg = str(e.get("ctx", {}).get("error", msg.removeprefix("Value error, ")))
        elif e.get("type") == "finite_number":
            msg = f"must be a finite number (got {short_repr(e.get('input'))}); give a number"
        elif "input" in e and e.get("type") not in ("model_type", "dict_type", "bool_for_number"):
            msg = f"{msg} (got {short_repr(e['input'])})"
        msgs.append(f"{loc}: {msg}")
    where = f"{source}: " if source else ""
    return ConfigError(where + "; ".join(msgs))


# ---------------------------------------------------------------- reading a user's YAML
def read_user_bytes(path: str | Path, what: str) -> bytes:
    """A user's file, read whole up to the YAML size limit: missing, a folder or unreadable is one line."""
    from core.limits import MAX_YAML_BYTES

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{what} {str(p)!r} does not exist")
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder, not a {what}; give the file's path")
    limit = MAX_YAML_BYTES.value()
    try:
        with p.open("rb") as f:  # a bounded read: /dev/zero or a pipe cannot make it grow without end
            data = f.read(limit + 1) if limit is not None else f.read()
    except OSError as e:
        raise ConfigError(
            f"{p}: cannot read this {what} ({e.strerror or e}); check its permissions"
        ) from None
    if limit is not None and len(data) > limit:
        MAX_YAML_BYTES.check(p.stat().st_size if p.is_file() else len(data), f"{p}: file size")
    return data


def decode_text(data: bytes, source: str, what: str) -> str:
    """UTF-8 text of a user's file (a BOM is dropped); binary data or another encoding is one line."""
    if b"\x00" in data[:8192]:
        raise ConfigError(f"{source}: is a binary file, not a {what}; give the YAML text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{source}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "save the file as UTF-8"
        ) from None


class _Loader(yaml.SafeLoader):
    """The safe loader (no Python tags), refusing duplicate keys and alias bombs."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == MERGE_TAG:
                continue  # `<<` merges may override on purpose; unhashable keys are refused by PyYAML
            key = self.construct_object(key_node)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {short_repr(key)} (first given at line {first.line + 1}); "
                    "merge the two blocks into one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node


def _check_expansion(root: Node) -> None:
    """Refuse a document whose aliases expand to too many nodes (a "billion laughs"), or refer to themselves.

    Counts the expanded tree over the composed graph, each distinct node once (memoised), so the check
    costs the document's size, not its expansion.
    """
    from core.limits import MAX_YAML_ALIAS_NODES

    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        kids = _children(node)
        if done:
            on_path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            continue
        if id(node) in on_path:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to the block that contains it", node.start_mark
            )
        on_path.add(id(node))
        stack.append((node, True))
        stack += [(k, False) for k in kids if id(k) not in size]
    added = size[id(root)] - len(size)
    MAX_YAML_ALIAS_NODES.check(added, "YAML aliases", "each *alias is expanded where it is used")


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, ScalarNode):
        return []
    return list(node.value)


def parse_yaml(text: str, source: str) -> object:
    """YAML text as plain data: errors keep line and column (`file.yaml:12:5: ...`), in one line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.MarkedYAMLError as e:
        raise ConfigError(_yaml_message(e, source)) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        ch = chr(e.character) if isinstance(e.character, int) else e.character
        raise ConfigError(
            f"{source}:{line}:{col}: not valid YAML: character {ch!r} is not allowed; remove it"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(
            f"{source}: not valid YAML: nested too deeply to read; flatten the structure"
        ) from None


def _yaml_message(e: yaml.MarkedYAMLError, source: str) -> str:
    mark = e.problem_mark or e.context_mark
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    problem = e.problem or e.context or "cannot be read"
    if "could not determine a constructor for the tag" in problem:
        tag = problem.split("tag", 1)[1].strip()
        return f"{where}: YAML tag {tag} is not allowed (only plain data is read); remove the tag"
    if "duplicate key" in problem:
        return f"{where}: {problem}"
    context = ""
    if e.context and e.problem and e.context_mark is not None and e.context_mark is not mark:
        context = f" ({e.context} at line {e.context_mark.line + 1})"
    return (
        f"{where}: not valid YAML: {problem}{context}; check the indentation and quoting there "
        "(quote values that contain ': ' or ' #')"
    )


def yaml_from_bytes(data: bytes, source: str, what: str, mapping: bool = True) -> object:
    """A user's YAML (a file's or an upload's bytes) as data: size, encoding, syntax, duplicate keys and
    alias expansion are checked, each failure one line naming `source`."""
    from core.limits import MAX_YAML_BYTES

    MAX_YAML_BYTES.check(len(data), f"{source}: file size")
    out = parse_yaml(decode_text(data, source, what), source)
    if mapping and not isinstance(out, dict):
        raise ConfigError(f"{source}: a {what.split()[0]} must be a YAML mapping")
    return out


def read_yaml(path: str | Path, what: str, mapping: bool = True) -> object:
    """A user's YAML file (`what` names it in errors: "scenario file", "profile", ...), as data."""
    return yaml_from_bytes(read_user_bytes(path, what), str(Path(path)), what, mapping)
