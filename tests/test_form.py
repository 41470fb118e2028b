"""The params form, driven programmatically: built from the model, checked by it, saved as YAML."""

from __future__ import annotations

import shutil
from pathlib import Path

import ipywidgets as w
import pytest
import yaml

from runbook import params as model
from runbook.interactive.form import Form, ListEditor, MappingEditor

PROJECT = Path(__file__).resolve().parent.parent
BAD_DOMAIN = "example.com; touch /tmp/x"


@pytest.fixture
def form(tmp_path) -> Form:
    shutil.copy(PROJECT / "params" / "example-debian.yaml", tmp_path)
    return Form(tmp_path)


def fill(form: Form, **values) -> None:
    """Set fields as an operator would type them: `postfix__mydomain="x"`."""
    for name, value in values.items():
        form.fields[name.replace("__", ".")].input.value = value


def errors(form: Form) -> dict[str, str]:
    return {name: f.error.value for name, f in form.fields.items() if f.error.value}


def test_every_model_field_has_a_row_with_its_help_text(form):
    expected = {f"{section}.{key}": info
                for section in model.SECTIONS
                for key, info in model.Params.model_fields[section].annotation.model_fields.items()}
    assert set(form.fields) == set(expected)
    for name, field in form.fields.items():
        help_text = field.box.children[1].value
        assert expected[name].description.split()[0] in help_text, name


def test_widgets_fit_the_types(form):
    f = form.fields
    assert isinstance(f["target.privilege"].input, w.Dropdown)
    assert f["target.privilege"].input.options == ("none", "sudo", "doas")
    assert isinstance(f["target.use_agent"].input, w.Checkbox)
    timeout = f["target.command_timeout"].input
    assert isinstance(timeout, w.BoundedFloatText) and timeout.max == 3600
    # optional numbers and choices may stay unset (ssh_config or ssh's default decides)
    assert isinstance(f["target.port"].input, w.Text) and f["target.port"].get() is None
    assert f["target.host_key_policy"].get() is None
    assert None in dict(f["target.host_key_policy"].input.options).values()
    for name in ("postfix.mynetworks", "postfix.mydestination", "postfix.inet_interfaces"):
        assert type(f[name].input) is ListEditor, name
    for name in ("postfix.aliases", "postfix.extra_settings"):
        assert isinstance(f[name].input, MappingEditor), name
    assert isinstance(f["postfix.mydomain"].input, w.Text)


def test_defaults_come_from_the_model(form):
    data = form.data()
    assert data["target"]["command_timeout"] == 300 and data["target"]["privilege"] == "none"
    assert "port" not in data["target"] and "host_key_policy" not in data["target"]
    assert data["postfix"]["mynetworks"] == ["127.0.0.0/8", "[::1]/128"]
    assert data["postfix"]["mydomain"] == "", "a required field starts empty"


def test_secrets_are_not_fields_and_the_form_says_where_they_come_from(form):
    secrets = [n for n in form.fields if "password" in n or "passphrase" in n]
    # only references to a secret (an env var's name, a file's path), never the secret
    assert all(n.endswith(("_env", "_file")) for n in secrets), secrets
    note = form.widget.children[0].value
    assert "agent" in note and "key_file" in note and "known_hosts" in note


def test_a_bad_domain_shows_its_error_next_to_the_field_as_typed(form):
    form.load(form.directory / "example-debian.yaml")
    fill(form, postfix__mydomain=BAD_DOMAIN)
    assert list(errors(form)) == ["postfix.mydomain"]
    assert "not a DNS name" in errors(form)["postfix.mydomain"]
    fill(form, postfix__mydomain="example.test")
    assert errors(form) == {}


def test_typing_shows_only_the_touched_fields_errors(form):
    fill(form, target__host="mail.example.test")
    assert errors(form) == {}, "untouched empty fields are not flagged while typing"
    form.validate_button.click()
    assert {"postfix.mydomain", "postfix.myhostname", "postfix.test_recipient"} <= set(
        errors(form))
    assert "problem" in form.status.value


def test_list_items_are_checked_and_named(form):
    form.load(form.directory / "example-debian.yaml")
    editor = form.fields["postfix.mynetworks"].input
    editor.value = ["127.0.0.0/8", "0.0.0.0/0"]
    form.validate()
    assert "1: " in errors(form)["postfix.mynetworks"] and "open relay" in errors(form)[
        "postfix.mynetworks"]
    editor._add.click()  # an empty new row is no item
    assert editor.value == ["127.0.0.0/8", "0.0.0.0/0"]
    editor._remove(editor._rows[1])
    assert editor.value == ["127.0.0.0/8"]
    assert "postfix.mynetworks" not in errors(form)


def test_aliases_edit_as_name_and_comma_separated_targets(form):
    form.load(form.directory / "example-debian.yaml")
    aliases = form.fields["postfix.aliases"].input
    assert aliases.value == {"postmaster": ["root"], "root": ["samt"]}
    aliases._add.click()
    key, value = aliases._rows[-1].children[:2]
    key.value, value.value = "abuse", "root, samt"
    assert form.validate().postfix.aliases["abuse"] == ["root", "samt"]
    key.value = "Abuse"
    form.validate()
    assert "Abuse" in errors(form)["postfix.aliases"]


def test_save_writes_yaml_the_model_loads(form, tmp_path):
    form.load(tmp_path / "example-debian.yaml")
    fill(form, postfix__mydomain="example.test", postfix__myhostname="mail.example.test")
    form.save_name.value = "myhost"
    form.save_button.click()
    path = tmp_path / "myhost.yaml"
    assert form.saved == path and "saved" in form.status.value
    text = path.read_text()
    assert text.startswith("# Written by the mail-runbook form")
    assert "key_file: ~/.ssh/id_ed25519" in text, "paths are kept as typed"
    loaded = model.load(path)
    assert loaded == form.check()[0]
    assert loaded.postfix.mydomain == "example.test"
    assert "myhost.yaml" in form.files.options and form.files.value == "myhost.yaml"


def test_save_refuses_to_overwrite_without_confirmation(form, tmp_path):
    form.load(tmp_path / "example-debian.yaml")
    form.save_name.value = "example-debian"
    before = (tmp_path / "example-debian.yaml").read_text()
    assert form.save() is None
    assert "exists" in form.status.value and "overwrite" in form.status.value
    assert (tmp_path / "example-debian.yaml").read_text() == before
    form.overwrite.value = True
    assert form.save() == tmp_path / "example-debian.yaml"
    assert form.overwrite.value is False, "the confirmation holds for one save only"
    assert model.load(tmp_path / "example-debian.yaml") == model.load(
        PROJECT / "params" / "example-debian.yaml")


def test_save_refuses_invalid_values_and_bad_names(form, tmp_path):
    form.load(tmp_path / "example-debian.yaml")
    fill(form, postfix__mydomain=BAD_DOMAIN)
    form.save_name.value = "bad"
    assert form.save() is None and not (tmp_path / "bad.yaml").exists()
    assert "not saved" in form.status.value
    fill(form, postfix__mydomain="example.test")
    for name in ("../escape", "", "a/b"):
        form.save_name.value = name
        assert form.save() is None, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example-debian.yaml"]


EXAMPLES = sorted(p.name for p in (PROJECT / "params").glob("example-*.yaml"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_loads_valid_and_round_trips(name, tmp_path):
    shutil.copy(PROJECT / "params" / name, tmp_path)
    form = Form(tmp_path)
    assert form.load(tmp_path / name) == model.load(tmp_path / name)
    form.save_name.value = "copy"
    assert model.load(form.save()) == model.load(tmp_path / name)


def test_loading_a_file_with_unknown_keys_and_unusable_values_says_so(tmp_path):
    data = yaml.safe_load((PROJECT / "params" / "example-debian.yaml").read_text())
    data["postfix"]["mydomian"] = "typo.test"
    data["target"]["privilege"] = "su"
    data["target"]["command_timeout"] = 7000
    data["target"]["port"] = 70000
    (tmp_path / "odd.yaml").write_text(yaml.safe_dump(data))
    form = Form(tmp_path)
    assert form.load(tmp_path / "odd.yaml") is None
    assert "postfix.mydomian: unknown key" in form.problems.value
    assert "one of none, sudo, doas" in errors(form)["target.privilege"]
    assert "7000 from the file is outside 0.0 … 3600.0" in errors(form)[
        "target.command_timeout"]
    assert "less than or equal to 65535" in errors(form)["target.port"]  # the model's word
    assert "fix the fields" in form.status.value


def test_loading_through_the_dropdown_and_button(form):
    assert form.files.options == ("example-debian.yaml",)
    form.files.value = "example-debian.yaml"
    form.load_button.click()
    assert form.fields["postfix.mydomain"].input.value == "example.org"
    assert "loaded example-debian.yaml: valid" in form.status.value


def test_params_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNBOOK_PARAMS_DIR", str(tmp_path))
    (tmp_path / "x.yaml").write_text("{}")
    assert Form().files.options == ("x.yaml",)
