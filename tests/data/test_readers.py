"""Tests of read_data: every supported format written with an independent writer
(pandas / openpyxl / pyreadstat / polars) and read back, plus every error message."""

import numpy as np
import pandas as pd
import polars as pl
import pyreadstat
import pytest

import alliance_models as am
from alliance_models import DataValidationError
from alliance_models.data.readers import SUPPORTED_EXTENSIONS, read_data, read_redcap


@pytest.fixture
def table():
    return pd.DataFrame(
        {
            "patient": ["p1", "p2", "p3"],
            "therapist": ["t1", "t1", "t2"],
            "age": [34.0, 51.5, 70.0],
            "wai_1": [1, 5, 3],
        }
    )


def _check_same(got, expected):
    assert list(got.columns) == list(expected.columns)
    for c in expected.columns:
        if pd.api.types.is_numeric_dtype(expected[c]):
            np.testing.assert_allclose(got[c].to_numpy(float), expected[c].to_numpy(float))
        else:
            assert got[c].astype(str).tolist() == expected[c].astype(str).tolist()


def test_csv_and_tsv(tmp_path, table):
    table.to_csv(tmp_path / "d.csv", index=False)
    got = read_data(tmp_path / "d.csv")
    _check_same(got, table)
    assert got.attrs["source"] == str(tmp_path / "d.csv")
    table.to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    _check_same(read_data(str(tmp_path / "d.tsv")), table)
    # kwargs reach pandas.read_csv
    table.to_csv(tmp_path / "semi.csv", index=False, sep=";")
    _check_same(read_data(tmp_path / "semi.csv", sep=";"), table)


def test_xlsx_sheets(tmp_path, table):
    path = tmp_path / "d.xlsx"
    with pd.ExcelWriter(path, engine="openpyxl") as xw:
        table.to_excel(xw, sheet_name="first", index=False)
        table.iloc[:2].to_excel(xw, sheet_name="second", index=False)
    _check_same(read_data(path), table)
    _check_same(read_data(path, sheet="second"), table.iloc[:2])
    _check_same(read_data(path, sheet=1), table.iloc[:2])
    with pytest.raises(DataValidationError, match=r"sheet 'third' is not in .*'first', 'second'"):
        read_data(path, sheet="third")
    with pytest.raises(DataValidationError, match=r"sheet 5 is out of range .* 2 sheet"):
        read_data(path, sheet=5)


def test_spss_value_and_variable_labels(tmp_path):
    df = pd.DataFrame(
        {
            "patient": ["p1", "p2", "p3"],
            "sex": [1.0, 2.0, np.nan],
            "age": [30.5, 40.0, 50.0],
            **{f"wai_{i}": [1.0, 5.0, 3.0] for i in range(1, 13)},
        }
    )
    item_labels = {1.0: "Seldom", 3.0: "Fairly often", 5.0: "Always"}
    path = tmp_path / "d.sav"
    pyreadstat.write_sav(
        df,
        str(path),
        column_labels={"sex": "Sex", "age": "Age in years"},
        variable_value_labels={
            "sex": {1.0: "male", 2.0: "female"},
            **{f"wai_{i}": item_labels for i in range(1, 13)},
        },
    )
    got = read_data(path)
    assert isinstance(got["sex"].dtype, pd.CategoricalDtype)
    assert got["sex"].astype(object).tolist()[:2] == ["male", "female"]
    assert pd.isna(got["sex"].iloc[2])
    assert got.attrs["column_labels"] == {"sex": "Sex", "age": "Age in years"}
    assert got.attrs["value_labels"]["sex"] == {1.0: "male", 2.0: "female"}
    np.testing.assert_allclose(got["age"], df["age"])
    # labelled items are mapped back to their codes when scored: 12 * (1, 5, 3)
    assert am.score(got, "wai-sr")["wai_sr_total"].tolist() == [12.0, 60.0, 36.0]
    # kwargs override the defaults: raw codes instead of categories
    raw = read_data(path, apply_value_formats=False)
    assert raw["sex"].tolist()[:2] == [1.0, 2.0]


def test_stata_value_labels(tmp_path):
    df = pd.DataFrame({"patient": ["a", "b"], "arm": [0, 1], "adherence": [0.5, np.nan]})
    path = tmp_path / "d.dta"
    pyreadstat.write_dta(
        df,
        str(path),
        column_labels={"arm": "Randomised arm"},
        variable_value_labels={"arm": {0: "control", 1: "alliance training"}},
    )
    got = read_data(path)
    assert isinstance(got["arm"].dtype, pd.CategoricalDtype)
    assert got["arm"].astype(str).tolist() == ["control", "alliance training"]
    assert got.attrs["column_labels"] == {"arm": "Randomised arm"}
    assert got["adherence"].iloc[0] == 0.5 and np.isnan(got["adherence"].iloc[1])


def test_pandas_input_is_copied(table):
    got = read_data(table)
    got.loc[0, "age"] = -1.0
    assert table.loc[0, "age"] == 34.0
    assert read_data(table).attrs.get("source") is None


def test_polars_input(table):
    pdf = pl.from_pandas(table)
    _check_same(read_data(pdf), table)
    _check_same(read_data(pdf.lazy()), table)


def test_file_not_found(tmp_path):
    with pytest.raises(DataValidationError, match=r"file not found: '.*nope\.csv'"):
        read_data(tmp_path / "nope.csv")


def test_unsupported_extension_lists_supported(tmp_path):
    (tmp_path / "d.json").write_text("{}")
    with pytest.raises(
        DataValidationError,
        match=r"'.*d\.json': extension '\.json' is not supported; read_data supports "
        r"\.csv, \.tsv, \.xlsx, \.xlsm, \.xls, \.sav, \.zsav, \.dta",
    ):
        read_data(tmp_path / "d.json")
    assert set(SUPPORTED_EXTENSIONS) == {".csv", ".tsv", ".xlsx", ".xlsm", ".xls", ".sav",
                                         ".zsav", ".dta"}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("bad.xlsx", "Excel"),
        ("bad.xls", "Excel 97-2003"),
        ("bad.sav", "SPSS"),
        ("bad.dta", "Stata"),
    ],
)
def test_corrupt_files(tmp_path, name, kind):
    path = tmp_path / name
    path.write_bytes(b"\x00\x01garbage, not a real file" * 20)
    with pytest.raises(
        DataValidationError, match=rf"could not read '.*{name}': not a readable {kind} file"
    ):
        read_data(path)


def test_non_utf8_csv_names_the_encoding(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("patient,city\np1,Malm\xf6\n".encode("latin-1"))
    with pytest.raises(DataValidationError, match=r"latin\.csv' as CSV: it is not UTF-8.*encoding"):
        read_data(path)
    assert read_data(path, encoding="latin-1")["city"].tolist() == ["Malm\xf6"]


def test_empty_files(tmp_path):
    (tmp_path / "zero.csv").write_bytes(b"")
    with pytest.raises(DataValidationError, match=r"file '.*zero\.csv' is empty \(0 bytes\)"):
        read_data(tmp_path / "zero.csv")
    (tmp_path / "blank.csv").write_text("\n\n")
    with pytest.raises(DataValidationError, match=r"file '.*blank\.csv' is empty"):
        read_data(tmp_path / "blank.csv")
    (tmp_path / "header.csv").write_text("patient,age\n")
    with pytest.raises(
        DataValidationError, match=r"'.*header\.csv' has no data rows \(columns: 'patient', 'age'\)"
    ):
        read_data(tmp_path / "header.csv")
    pd.DataFrame({"a": []}).to_excel(tmp_path / "e.xlsx", index=False)
    with pytest.raises(DataValidationError, match=r"e\.xlsx' has no data rows"):
        read_data(tmp_path / "e.xlsx")
    with pytest.raises(DataValidationError, match="the data frame has no data rows"):
        read_data(pd.DataFrame({"a": []}))


def test_directory_and_bad_arguments(tmp_path, table):
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataValidationError, match=r"dir\.csv' is a directory"):
        read_data(tmp_path / "dir.csv")
    with pytest.raises(DataValidationError, match="reads a file path, a pandas or a polars"):
        read_data(42)
    with pytest.raises(DataValidationError, match="redcap must be True, False or 'auto'"):
        read_data(table, redcap="yes")


def test_redcap_auto_detection(tmp_path):
    raw = pd.DataFrame(
        {
            "record_id": [1, 1, 1],
            "redcap_event_name": ["baseline_arm_1", "treatment_arm_1", "treatment_arm_1"],
            "redcap_repeat_instrument": [None, "session", "session"],
            "redcap_repeat_instance": [None, 1, 2],
            "age": [50, None, None],
            "attended": [None, 1, 0],
        }
    )
    raw.to_csv(tmp_path / "rc.csv", index=False)
    flat = read_data(tmp_path / "rc.csv")
    assert flat[["session", "age", "attended"]].to_numpy().tolist() == [[1, 50, 1], [2, 50, 0]]
    assert flat.attrs["source"] == str(tmp_path / "rc.csv")
    assert flat.attrs["redcap"]["n_records"] == 1
    assert len(read_data(tmp_path / "rc.csv", redcap=False)) == 3
    # a flattened export written back to disk is read as it is, not flattened again
    flat.to_csv(tmp_path / "flat.csv", index=False)
    again = read_data(tmp_path / "flat.csv")
    assert again[["session", "age", "attended"]].to_numpy().tolist() == [[1, 50, 1], [2, 50, 0]]
    # excel export of the same layout is flattened too
    raw.to_excel(tmp_path / "rc.xlsx", index=False)
    assert len(read_data(tmp_path / "rc.xlsx")) == 2
    # forcing redcap on a file without REDCap columns is an error naming them
    pd.DataFrame({"patient": [1]}).to_csv(tmp_path / "plain.csv", index=False)
    with pytest.raises(DataValidationError, match="is not a REDCap export.*redcap_event_name"):
        read_data(tmp_path / "plain.csv", redcap=True)


def test_public_names():
    assert am.read_data is read_data
    # the reader of REDCap files lives with the other readers; redcap.py reads nothing
    assert am.read_redcap is read_redcap


def test_compressed_spss_zsav(tmp_path, table):
    path = tmp_path / "d.zsav"
    pyreadstat.write_sav(
        table, str(path), compress=True, variable_value_labels={"wai_1": {1: "Seldom"}}
    )
    assert path.read_bytes()[:4] == b"$FL3"  # the zsav (zlib-compressed) signature
    got = read_data(path)
    assert got["patient"].tolist() == ["p1", "p2", "p3"]
    np.testing.assert_allclose(got["age"], table["age"])
    assert got["wai_1"].astype(object).tolist() == ["Seldom", 5.0, 3.0]
    assert got.attrs["value_labels"]["wai_1"] == {1: "Seldom"}
