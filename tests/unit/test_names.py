"""Target names made from source names (zetl.names), as the sinks use them, and the unambiguous
string form of TableId."""

from __future__ import annotations

import random
import unicodedata

import pytest

from zetl.events import TableId
from zetl.names import PRINTABLE_NAMES, URI_PATH_NAMES, check_template_text, is_safe, safe_name, unsafe_reason
from zetl.plugin import PluginContext
from zetl.tables import TableSelection, compile_pattern
from zetl_sinks.iceberg import IcebergConfig, IcebergSink
from zetl_sinks.redshift.config import RedshiftConfig
from zetl_sinks.redshift.identifiers import IdentifierRules
from zetl_sinks.redshift.sink import RedshiftSink

HOSTILE = [
    "x/../../../../../../../../tmp/zetl/escaped",
    "..",
    ".",
    "...",
    "a/b",
    "a\\b",
    "a..b",
    "/abs",
    "t\x00x",
    "line\nbreak",
    "tab\there",
    "esc\x1b[31m",
    "bidi\u202eevil",
    "zero\u200bwidth",
    "para\u2029sep",
    "",
]


def _leaves_its_place(name: str) -> bool:
    return "/" in name or "\\" in name or ".." in name or set(name) <= {"."} or any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in name)


@pytest.mark.parametrize("rules", [PRINTABLE_NAMES, URI_PATH_NAMES], ids=["printable", "uri-path"])
def test_hostile_names_become_safe_and_distinct(rules: object) -> None:
    mapped = [safe_name(n, rules) for n in HOSTILE]  # type: ignore[arg-type]
    for source, target in zip(HOSTILE, mapped):
        assert not _leaves_its_place(target), (source, target)
        assert target != source
        assert safe_name(source, rules) == target  # type: ignore[arg-type]  # deterministic
        assert is_safe(target, rules), target  # type: ignore[arg-type]  # and stable: mapping again keeps it
    assert len(set(mapped)) == len(mapped)


@pytest.mark.parametrize("name", ["orders", "Orders", "order_items", "t.x", "we ird", 'q"uote', "ünïcödé", "日本語", "a-b", "a:b", "public", "a.b.c"])
def test_safe_names_map_to_themselves(name: str) -> None:
    assert safe_name(name, PRINTABLE_NAMES) == name
    assert safe_name(name, URI_PATH_NAMES) == name


def test_uri_path_rules_also_replace_what_changes_a_uri() -> None:
    for name in ("100%", "%2e%2e%2f", "a?b", "a#b"):
        mapped = safe_name(name, URI_PATH_NAMES)
        assert not any(c in mapped for c in "%?#") and mapped != name
        assert safe_name(name, PRINTABLE_NAMES) == name  # quoted identifiers take them


def test_names_that_would_collide_after_replacing_stay_apart() -> None:
    names = ["a/b", "a\\b", "a_b", "a\x00b", "a\nb"]
    mapped = {safe_name(n, URI_PATH_NAMES) for n in names}
    assert len(mapped) == len(names)
    assert "a_b" in mapped  # the safe one kept its name


def test_random_names_never_leave_their_place() -> None:
    rng = random.Random(11)
    alphabet = ["/", "\\", ".", "a", "_", "\x00", "\n", "%", "#", "?", " ", '"', "é", "\u202e"]
    seen: dict[str, str] = {}
    for _ in range(5000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        for rules in (PRINTABLE_NAMES, URI_PATH_NAMES):
            mapped = safe_name(name, rules)
            assert not _leaves_its_place(mapped), (name, mapped)
            assert unsafe_reason(mapped, rules) is None, (name, mapped)
        mapped = safe_name(name, URI_PATH_NAMES)
        assert seen.setdefault(mapped, name) == name, f"{name!r} and {seen[mapped]!r} both map to {mapped!r}"


def test_template_text_is_checked() -> None:
    assert check_template_text("{schema}_{table}") == "{schema}_{table}"
    for bad in ("../{table}", "{schema}/{table}", "x\n{table}"):
        with pytest.raises(ValueError, match="cannot be used"):
            check_template_text(bad)
    with pytest.raises(ValueError, match="'#'"):
        IcebergConfig(table_name="{table}#x")


# -- TableId ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table, text",
    [
        (TableId("public", "orders"), "public.orders"),
        (TableId("", "orders"), "orders"),
        (TableId("we.ird", "t.x"), '"we.ird"."t.x"'),
        (TableId("we", "ird.t.x"), 'we."ird.t.x"'),
        (TableId("s", 'q"q'), 's."q""q"'),
        (TableId("", "a.b"), '"a.b"'),
        (TableId("public", "x/../../escaped"), 'public."x/../../escaped"'),
        (TableId("public", "we ird ünï"), "public.we ird ünï"),
    ],
)
def test_table_id_string_form_is_unambiguous_and_parses_back(table: TableId, text: str) -> None:
    assert str(table) == text
    assert TableId.parse(text) == table


def test_table_id_round_trips_for_random_names() -> None:
    rng = random.Random(5)
    alphabet = ['"', ".", "a", "b", " ", "é", "\x00", "/"]
    rendered: dict[str, TableId] = {}
    for _ in range(5000):
        table = TableId("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5))), "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))))
        text = str(table)
        assert TableId.parse(text) == table, (table, text)
        assert rendered.setdefault(text, table) == table, f"{table} and {rendered[text]} print the same"


def test_table_id_parse_keeps_earlier_unquoted_forms_and_refuses_an_open_quote() -> None:
    assert TableId.parse("db.schema.t") == TableId("db.schema", "t")
    assert TableId.parse('"we.ird".t') == TableId("we.ird", "t")
    with pytest.raises(ValueError, match="not closed"):
        TableId.parse('public."t.x')


def test_table_patterns_match_dotted_names_quoted_or_not() -> None:
    table = TableId("public", "t.x")
    assert compile_pattern("public.t.x").matches(table)  # as users wrote it before quoting
    assert compile_pattern('public."t.x"').matches(table)
    assert compile_pattern("public.*").matches(table)
    assert TableSelection.of(["we.ird.*"]).matches(TableId("we.ird", "t"))
    assert not compile_pattern("public.t").matches(table)


# -- the sinks' use of the mapping --------------------------------------------------------


def test_iceberg_table_identifiers_are_safe_and_unchanged_for_safe_names() -> None:
    sink = IcebergSink(IcebergConfig(namespace="lake"), PluginContext(integration="shop"))
    assert sink.table_identifier(TableId("public", "orders")) == ("lake", "public_orders")
    assert sink.table_identifier(TableId("public", "we ird ünï")) == ("lake", "public_we ird ünï")
    assert sink.table_identifier(TableId("public", "t.x")) == ("lake", "public_t.x")
    escaped = sink.table_identifier(TableId("public", "x/../../../escaped"))
    assert escaped[0] == "lake" and not _leaves_its_place(escaped[1]) and escaped[1].startswith("public_x_")
    assert sink.table_identifier(TableId("public", "a/b")) != sink.table_identifier(TableId("public", "a\\b"))
    assert sink.table_identifier(TableId("..", "t"))[1] != sink.table_identifier(TableId("_", "t"))[1]


def test_redshift_identifiers_are_safe_and_unchanged_for_safe_names() -> None:
    rules = IdentifierRules()
    assert rules.name("Orders") == "orders"
    assert rules.name('we"ird; name') == 'we"ird; name'
    for hostile in HOSTILE:
        mapped = rules.name(hostile)
        assert not _leaves_its_place(mapped) and "\x00" not in mapped
        assert len(mapped.encode()) <= 127
    long = "x/" + "é" * 200
    assert len(rules.name(long).encode()) <= 127 and "/" not in rules.name(long)
    sink = RedshiftSink(RedshiftConfig.model_validate({"host": "h", "database": "d", "user": "u", "password": "p"}), PluginContext(integration="i"))
    assert sink.target_table_name(TableId("public", "orders")) == "orders"
    assert sink.target_table_name(TableId("public", "a/b")) != sink.target_table_name(TableId("public", "a\\b"))
