"""Spec files as operators write them: empty documents, anchors and aliases, lines of errors."""

from __future__ import annotations

from netd.adapters.specfile import SpecFileError, load_objects, read_documents

TENANT = "apiVersion: netd/v1\nkind: TenantNetwork\nmetadata: {name: blue}\nspec: {vni: 1, subnet: 10.20.0.0/24}\n"


def test_empty_documents_are_skipped_as_kubectl_skips_them():
    text = f"---\n# only a comment\n---\n{TENANT}---\n"
    docs, problems = read_documents("t.yaml", text)
    assert problems == [] and [d.index for d in docs] == [1]


def test_an_alias_inside_its_own_anchor_is_an_error_not_a_crash():
    text = ("apiVersion: netd/v1\nkind: TenantNetwork\nmetadata: &m {name: red, labels: *m}\n"
            "spec: {vni: 2, subnet: 10.20.0.0/24}\n")
    docs, problems = read_documents("t.yaml", text)
    assert problems == [] and len(docs) == 1


def test_errors_name_the_field_and_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: netd/v1\nkind: TenantNetwork\nmetadata: {name: blue}\nspec:\n  vni: 1\n"
                   "  subnet: 10.20.0.0/24\n  gateway: 10.30.0.1\n---\n"
                   "apiVersion: netd/v1\nkind: TenantNetwork\nmetadata: &m {name: red, labels: *m}\n"
                   "spec: {vni: 2, subnet: 10.21.0.0/24}\n")
    try:
        load_objects([str(bad)], [])
    except SpecFileError as exc:
        text = str(exc)
    else:
        raise AssertionError("no error")
    assert f"{bad}:7: document 1 (TenantNetwork blue): spec.gateway: 10.30.0.1 is not a host address of subnet " \
           "10.20.0.0/24" in text, text
    assert f"{bad}:11: document 2 (TenantNetwork red): metadata.labels" in text, text
