"""The parameter form for JupyterLab, generated from `runbook.params.Params`.

Every field of every section becomes one row: a widget chosen from the field's type, its
description as help text, and its error next to it. Values are checked by the model itself
(the touched field as you type, every field on Validate), so the form accepts exactly what a
params file may hold. Secrets are not fields: keys come from the SSH agent or a key file.
"""

from __future__ import annotations

import html
import os
import re
import types
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args, get_origin

import ipywidgets as w
import yaml
from pydantic.fields import FieldInfo
from traitlets import TraitError

from runbook import params as model
from runbook.errors import ParamsError

PROJECT = Path(__file__).resolve().parents[2]
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SECRETS_NOTE = (
    "No secrets in this form or in params files. The SSH key comes from the agent "
    "(<code>use_agent</code>) or from the private key file named in <code>key_file</code>; "
    "the host's key must be in the <code>known_hosts</code> file you name "
    "(or choose <code>accept-new</code> for a host seen the first time). A password is "
    "never typed here either: name the environment variable or the file that holds it."
)


def params_dir() -> Path:
    """Where params files are listed and saved (RUNBOOK_PARAMS_DIR overrides, for tests)."""
    return Path(os.environ.get("RUNBOOK_PARAMS_DIR") or PROJECT / "params")


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without Optional and Annotated, and whether None is allowed."""
    optional = False
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        annotation = args[0]
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation, optional


def _bound(info: FieldInfo, *names: str) -> Any:
    return next((getattr(m, n) for m in info.metadata for n in names if hasattr(m, n)), None)


def _items(value: Any) -> list[str]:
    """A list as the form edits it: a YAML list, or Postfix's "a, b" / "a b" in one string."""
    if isinstance(value, str):
        return [item for item in re.split(r"[\s,]+", value) if item]
    return [str(item) for item in value or []]


class ListEditor(w.VBox):
    """One text box per item, each with a remove button, and an add button."""

    def __init__(self, on_change):
        self._on_change = on_change
        self._rows: list[w.HBox] = []
        self._add = w.Button(description="add", icon="plus", layout=w.Layout(width="6em"))
        self._add.add_class("rb-add")
        self._add.on_click(lambda _: self._append("", notify=True))
        super().__init__([self._add])

    def _cells(self, text: str) -> list[w.Widget]:
        return [w.Text(text, continuous_update=False, layout=w.Layout(width="22em"))]

    def _append(self, *texts: str, notify: bool = False) -> None:
        cells = self._cells(*texts)
        for cell in cells:
            cell.observe(lambda _: self._on_change(), "value")
        remove = w.Button(icon="times", tooltip="remove", layout=w.Layout(width="2.5em"))
        row = w.HBox([*cells, remove])
        remove.on_click(lambda _: self._remove(row))
        self._rows.append(row)
        self.children = [*self._rows, self._add]
        if notify:
            self._on_change()

    def _remove(self, row: w.HBox) -> None:
        self._rows.remove(row)
        self.children = [*self._rows, self._add]
        self._on_change()

    def _texts(self) -> list[list[str]]:
        return [[cell.value.strip() for cell in row.children[:-1]] for row in self._rows]

    @property
    def value(self) -> list[str]:
        return [text for (text,) in self._texts() if text]

    @value.setter
    def value(self, items: Any) -> None:
        self._rows = []
        self.children = [self._add]
        for item in _items(items):
            self._append(item)


class MappingEditor(ListEditor):
    """Key / value rows (aliases, extra main.cf settings); list values as "a, b"."""

    def __init__(self, on_change, list_values: bool):
        self._list_values = list_values
        super().__init__(on_change)

    def _cells(self, key: str = "", value: str = "") -> list[w.Widget]:
        return [w.Text(key, placeholder="name", continuous_update=False,
                       layout=w.Layout(width="12em")),
                w.Text(value, placeholder="value", continuous_update=False,
                       layout=w.Layout(width="22em"))]

    @property
    def value(self) -> dict[str, Any]:
        rows = [(k, v) for k, v in self._texts() if k or v]
        return {k: _items(v) if self._list_values else v for k, v in rows}

    @value.setter
    def value(self, mapping: dict | None) -> None:
        self._rows = []
        self.children = [self._add]
        for key, value in (mapping or {}).items():
            text = ", ".join(_items(value)) if self._list_values else str(value)
            self._append(str(key), text)


class Field:
    """One model field: its input widget, help text and error, chosen from its type."""

    def __init__(self, section: str, key: str, info: FieldInfo, on_change):
        self.name = f"{section}.{key}"
        self.info = info
        self.kind, self.optional = _unwrap(info.annotation)
        self.input = self._widget(lambda: on_change(self))
        self.error = w.HTML(layout=w.Layout(margin="0 0 0 1em", flex="1 1 auto"))
        self.error.add_class("rb-error")
        self.error.add_class(f"rb-error-{section}-{key}")
        star = "" if not info.is_required() else " *"
        label = w.Label(key + star, tooltip=info.description,
                        layout=w.Layout(width="14em", min_width="14em"))
        help_text = w.HTML(f'<small style="color:#666">{html.escape(info.description or "")}'
                           "</small>", layout=w.Layout(margin="0 0 0.6em 14.5em"))
        self.box = w.VBox([w.HBox([label, self.input, self.error]), help_text])
        self.box.add_class("rb-field")
        self.box.add_class(f"rb-field-{section}-{key}")
        self.set(None if info.is_required() else info.get_default(call_default_factory=True))

    def _widget(self, changed) -> w.Widget:
        kind, info = self.kind, self.info
        if get_origin(kind) is dict:
            value_type, _ = _unwrap(get_args(kind)[1])
            return MappingEditor(changed, list_values=get_origin(value_type) is list)
        if get_origin(kind) is list:
            return ListEditor(changed)
        if get_origin(kind) is typing.Literal:
            # an optional choice may be left empty: the value then comes from elsewhere
            choices = get_args(kind)
            widget = w.Dropdown(options=[("(unset: see its help)", None),
                                         *((c, c) for c in choices)] if self.optional
                                else choices)
        elif kind is bool:
            widget = w.Checkbox(indent=False)
        elif kind in (int, float) and self.optional:  # a number box cannot be empty
            widget = w.Text(continuous_update=False, placeholder="(unset: see its help)",
                            layout=w.Layout(width="10em"))
        elif kind in (int, float):
            widget = self._number(kind, _bound(info, "ge", "gt"), _bound(info, "le", "lt"))
        else:
            widget = w.Text(continuous_update=False, layout=w.Layout(width="22em"))
        widget.observe(lambda _: changed(), "value")
        return widget

    @staticmethod
    def _number(kind, low, high) -> w.Widget:
        plain, bounded = (w.IntText, w.BoundedIntText) if kind is int else (
            w.FloatText, w.BoundedFloatText)
        if low is None and high is None:
            return plain(layout=w.Layout(width="10em"))
        limits = {k: v for k, v in (("min", low), ("max", high)) if v is not None}
        return bounded(layout=w.Layout(width="10em"), **limits)

    def get(self) -> Any:
        """The value to validate: None for an empty optional field, text as typed."""
        value = self.input.value
        if isinstance(value, str):
            value = value.strip()
            if not value and self.optional:
                return None
            if self.kind in (int, float):  # typed into a text box: a number if it is one
                try:
                    return self.kind(value)
                except ValueError:
                    return value  # the model names the field and says why
            return value
        if value == [] and self.optional:  # an optional list left empty: unset
            return None
        return value

    def set(self, value: Any) -> str | None:
        """Show `value`; a value the widget cannot hold is refused with the reason."""
        try:
            if isinstance(self.input, ListEditor):
                self.input.value = value
            elif isinstance(self.input, w.Text):
                self.input.value = "" if value is None else str(value)
            elif value is not None:
                self.input.value = value
                if self.input.value != value:  # a bounded number box clamps silently
                    return (f"{value!r} from the file is outside "
                            f"{self.input.min} … {self.input.max}")
        except (TraitError, TypeError, AttributeError):
            choices = getattr(self.input, "options", None)
            hint = f"; one of {', '.join(map(str, choices))}" if choices else ""
            return f"{value!r} from the file cannot be used here{hint}"
        return None

    def show_error(self, messages: list[str] | None) -> None:
        self.error.value = "".join(
            f'<div style="color:#c00">{html.escape(m)}</div>' for m in messages or [])


# Over the ~150-line mark on purpose: one widget tree with its load, check and save bars,
# which share the fields and the message line.
class Form:
    """The whole form: one Field per model field, load, validate and save."""

    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory else params_dir()
        self.fields: dict[str, Field] = {}
        self.touched: set[str] = set()
        self.saved: Path | None = None
        self._filling = True  # values set by the form itself are not the operator typing
        self.status = w.HTML()
        self.status.add_class("rb-status")
        self.problems = w.HTML()
        self.problems.add_class("rb-problems")
        sections = [self._section(name) for name in model.SECTIONS]
        self.widget = w.VBox([self._header(), self._load_bar(), *sections,
                              self._validate_bar(), self.problems, self._save_bar(),
                              self.status])
        self.widget.add_class("rb-form")
        self._filling = False

    # --- building ----------------------------------------------------------------------

    def _header(self) -> w.Widget:
        return w.HTML(f"<h2>Parameters</h2><p>{SECRETS_NOTE}</p>")

    def _section(self, section: str) -> w.Widget:
        model_class = model.Params.model_fields[section].annotation
        title = w.HTML(f"<h3>{section}</h3><p>{html.escape(model_class.__doc__ or '')}</p>")
        rows = []
        for key, info in model_class.model_fields.items():
            field = Field(section, key, info, self._changed)
            self.fields[field.name] = field
            rows.append(field.box)
        return w.VBox([title, *rows])

    def _load_bar(self) -> w.Widget:
        self.files = w.Dropdown(description="params file", options=self._files())
        self.files.add_class("rb-files")
        load = w.Button(description="Load", icon="folder-open")
        load.add_class("rb-load")
        load.on_click(lambda _: self.load(self.directory / self.files.value)
                      if self.files.value else None)
        self.load_button = load
        return w.HBox([self.files, load])

    def _validate_bar(self) -> w.Widget:
        self.validate_button = w.Button(description="Validate", icon="check",
                                        button_style="info")
        self.validate_button.add_class("rb-validate")
        self.validate_button.on_click(lambda _: self.validate())
        return self.validate_button

    def _save_bar(self) -> w.Widget:
        self.save_name = w.Text(description="save as", placeholder="myhost",
                                continuous_update=True)
        self.save_name.add_class("rb-save-name")
        self.overwrite = w.Checkbox(description="overwrite an existing file", indent=False)
        self.overwrite.add_class("rb-overwrite")
        self.save_button = w.Button(description="Save", icon="save", button_style="primary")
        self.save_button.add_class("rb-save")
        self.save_button.on_click(lambda _: self.save())
        return w.HBox([self.save_name, w.HTML("<code>.yaml</code>"), self.overwrite,
                       self.save_button])

    def _files(self) -> list[str]:
        return sorted(p.name for p in self.directory.glob("*.yaml")) if (
            self.directory.is_dir()) else []

    def show(self) -> None:
        from IPython.display import display

        display(self.widget)

    # --- values and checking -----------------------------------------------------------

    def data(self) -> dict[str, dict]:
        """The sections as a params file holds them (empty optional fields left out)."""
        sections: dict[str, dict] = {name: {} for name in model.SECTIONS}
        for field in self.fields.values():
            section, key = field.name.split(".")
            value = field.get()
            if value is not None:
                sections[section][key] = value
        return sections

    def set_data(self, data: dict) -> list[tuple[str, str]]:
        """Put a params file's sections into the fields (defaults for what it leaves out);
        returns the problems of values the form cannot hold."""
        problems = []
        self._filling = True
        try:
            for field in self.fields.values():
                section, key = field.name.split(".")
                given = data.get(section) if isinstance(data.get(section), dict) else {}
                default = None if field.info.is_required() else field.info.get_default(
                    call_default_factory=True)
                refused = field.set(given.get(key, default))
                if refused:
                    problems.append((field.name, refused))
        finally:
            self._filling = False
        return problems + _unknown(data, self.fields)

    def check(self) -> tuple[model.Params | None, list[tuple[str, str]]]:
        """Validate the form's values with the model: (params, []) or (None, problems)."""
        try:
            return model.validate("form", **self.data()), []
        except ParamsError as e:
            return None, e.problems

    def _changed(self, field: Field) -> None:
        if self._filling:
            return
        self.touched.add(field.name)
        self.status.value = ""  # what it said (loaded, valid, saved) is no longer so
        self._show(self.check()[1], only=self.touched)

    def _show(self, problems: list[tuple[str, str]], only=None) -> list[str]:
        """Each problem next to its field; returns those that belong to no field."""
        by_field: dict[str, list[str]] = {}
        general = []
        for name, message in problems:
            key = ".".join(name.split(".")[:2])
            if key in self.fields:
                where = name[len(key) + 1:]
                by_field.setdefault(key, []).append(f"{where}: {message}" if where else message)
            else:
                general.append(f"{name}: {message}")
        for key, field in self.fields.items():
            if only is None or key in only:
                field.show_error(by_field.get(key))
        return general

    def validate(self, extra: list[tuple[str, str]] = ()) -> model.Params | None:
        """Check every field and show every error (with `extra` problems found on loading);
        the validated Params, or None."""
        self.touched = set(self.fields)
        params, problems = self.check()
        problems = [*problems, *extra]
        general = self._show(problems)
        self.problems.value = "".join(
            f'<div style="color:#c00">{html.escape(p)}</div>' for p in general)
        if problems:
            self._say(f"{len(problems)} problem(s): see the fields marked in red", error=True)
            return None
        self._say("valid: every field passes the model's checks")
        return params

    def _say(self, text: str, error: bool = False) -> None:
        color = "#c00" if error else "#070"
        self.status.value = f'<b style="color:{color}">{html.escape(text)}</b>'

    # --- files -------------------------------------------------------------------------

    def load(self, path: str | Path) -> model.Params | None:
        """Fill the form from a params file and validate it (errors shown, not raised)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            self._say(f"cannot load {path.name}: {e}", error=True)
            return None
        if not isinstance(data, dict):
            self._say(f"{path.name} is not a mapping of sections", error=True)
            return None
        params = self.validate(self.set_data(data))
        if params is None:
            self._say(f"loaded {path.name}: fix the fields marked in red", error=True)
        else:
            self._say(f"loaded {path.name}: valid")
        return params

    def save(self) -> Path | None:
        """Save to <directory>/<save as>.yaml if valid; an existing file needs `overwrite`."""
        name = self.save_name.value.strip().removesuffix(".yaml")
        if not _FILE_NAME.fullmatch(name):
            self._say("give the file a name: letters, digits, . _ - (e.g. myhost)", error=True)
            return None
        path = self.directory / f"{name}.yaml"
        if path.exists() and not self.overwrite.value:
            self._say(f"{path.name} exists: tick 'overwrite an existing file' to replace it",
                      error=True)
            return None
        if self.validate() is None:
            self._say("not saved: fix the fields marked in red first", error=True)
            return None
        _write(path, self.data())
        self.overwrite.value = False  # the confirmation holds for one save only
        self.saved = path
        self.files.options = self._files()
        self.files.value = path.name
        self._say(f"saved {_shown(path)}; run it headless with: runbook run {_shown(path)}")
        return path


def _unknown(data: dict, fields: dict[str, Field]) -> list[tuple[str, str]]:
    """Keys of a params file that are no field of the form (the model refuses them too)."""
    sections = {name.split(".")[0] for name in fields}
    problems = []
    for section, values in data.items():
        if section not in sections:
            problems.append((str(section), "unknown section; left out of the form"))
        elif not isinstance(values, dict):
            problems.append((section, "must be a mapping of fields; left out of the form"))
        else:
            problems += [(f"{section}.{key}", "unknown key; left out of the form")
                         for key in values if f"{section}.{key}" not in fields]
    return problems


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(PROJECT))
    except ValueError:
        return str(path)


class _Dumper(yaml.SafeDumper):
    """Sections and fields one a line; lists on one line, as the example files write them."""


_Dumper.add_representer(list, lambda dumper, items: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", items, flow_style=True))


def _write(path: Path, data: dict) -> None:
    """The params file, written whole to a temporary name and renamed over the target."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"# Written by the mail-runbook form on {stamp}. No secrets here: the SSH key\n"
            "# comes from key_file or the agent, the host's key from known_hosts.\n"
            + yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def show(directory: Path | None = None) -> Form:
    """Build the form, display it, and return it (its values stay readable in later cells)."""
    form = Form(directory)
    form.show()
    return form
