"""Bad input, fuzzed (issue 8, item 3): the processor, the corpus readers and ``embed``.

Every property here allows exactly two outcomes: the correct result (checked against an independent,
deliberately plain reference computation) or *our own* exception type — :class:`TxFMInputError` for the
processor and ``embed``, a :class:`CorpusBuildError` subclass naming the file for the readers — whose
message names the problem. A numpy/scipy/h5py/torch exception escaping, a hang (hypothesis deadline)
or an embedding computed from garbage fails the test.

Sizes: ``TXFM_FUZZ_EXAMPLES`` examples per property (default 60, bounded for ``make test``);
``make reliability`` runs thousands. Cases tried are counted in :data:`CASES` and, when
``TXFM_RELIABILITY_COUNTS`` names a file, written there as JSON (``benchmarks/reliability_campaign.py``
reads it for RESULTS.md).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from datetime import timedelta
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataset_builder import CorpusBuildError
from dataset_builder.readers import open_reader, to_counts
from modeling_txfm import TxFMConfig, TxFMForMaskedExpressionModeling, TxFMInputError, TxFMProcessor, embed

EXAMPLES = int(os.environ.get("TXFM_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=10),  # a hang is a failure, not a slow pass
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    derandomize=os.environ.get("TXFM_FUZZ_RANDOM") != "1",  # `make test` is reproducible; the campaign explores
)
#: outcome counters per property: {"processor/ok": n, "processor/TxFMInputError": n, ...}
CASES: Counter[str] = Counter()

N_VOCAB = 40
# Synthetic IDs far from real Ensembl numbers, so that the annotation table can never map a fuzzed symbol
# onto one of them by accident.
VOCAB = [f"ENSG{50_000_000_000 + i:011d}" for i in range(N_VOCAB)]
SYMBOLS = [f"GENE{i}" for i in range(N_VOCAB)]
K = 8
L = 1e5


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    """Print (and optionally save) how many cases each property tried, by outcome."""
    yield
    print("\nfuzz cases:", dict(sorted(CASES.items())))
    target = os.environ.get("TXFM_RELIABILITY_COUNTS")
    if target:
        path = Path(target)
        previous = json.loads(path.read_text()) if path.exists() else {}
        for key, n in CASES.items():
            previous[key] = previous.get(key, 0) + n
        path.write_text(json.dumps(previous, indent=1, sort_keys=True))


@pytest.fixture(scope="module")
def processor() -> TxFMProcessor:
    return TxFMProcessor(gene_ids=VOCAB, gene_symbols=SYMBOLS, num_visible_genes=K, library_size=L)


@pytest.fixture(scope="module")
def model() -> TxFMForMaskedExpressionModeling:
    torch.manual_seed(0)
    config = TxFMConfig.from_preset("txfm-tiny", gene_ids=VOCAB, gene_symbols=SYMBOLS, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2, num_visible_genes=K,
                                    decoder_hidden_size=16, drop_path_rate=0.0, library_size=L)
    return TxFMForMaskedExpressionModeling(config).eval()


# ------------------------------------------------------------------------------------ strategies

#: gene-name token → (the string, the vocabulary position it must map to or -1)
def _gene_token(kind: str, i: int, version: int) -> tuple[str, int]:
    j = i % N_VOCAB
    return {
        "id": (VOCAB[j], j),
        "versioned": (f"{VOCAB[j]}.{version}", j),
        "symbol": (SYMBOLS[j], j),
        "lower_symbol": (SYMBOLS[j].lower(), j),
        "padded": (f"  {VOCAB[j]} ", j),
        "unknown_id": (f"ENSG{60_000_000_000 + i:011d}.{version}", -1),
        "unknown_symbol": (f"NOTAGENE{i}", -1),
        "junk": (["", "nan", "None", "-", "ENSG", "ensg00000000001", "1"][i % 7], -1),
    }[kind]


gene_tokens = st.tuples(
    st.sampled_from(["id", "versioned", "symbol", "lower_symbol", "padded", "unknown_id", "unknown_symbol", "junk"]),
    st.integers(0, 60), st.integers(1, 3),
).map(lambda t: _gene_token(*t))

good_gene_tokens = st.tuples(st.sampled_from(["id", "versioned", "symbol", "lower_symbol", "padded"]),
                             st.integers(0, N_VOCAB - 1), st.integers(1, 3)).map(lambda t: _gene_token(*t))

INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64]
FLOAT_DTYPES = [np.float16, np.float32, np.float64]
SPECIAL_FLOATS = [np.nan, np.inf, -np.inf, -1.0, 0.5, 2.5, 1e300, 1e308, 3e38, 7e4, 2.0**53, 1e-300]


@st.composite
def count_matrices(draw, n_genes: int) -> tuple[object, np.ndarray]:
    """(the matrix as handed to the processor, the same numbers as a plain ndarray for the oracle)."""
    n_rows = draw(st.integers(0, 5))
    family = draw(st.sampled_from(["int", "int", "float", "float", "float", "other"]))
    if family == "int":
        dtype = draw(st.sampled_from(INT_DTYPES))
        info = np.iinfo(dtype)
        element = st.one_of(st.integers(0, 30), st.just(0), st.integers(int(info.min), int(info.max)))
        dense = np.array(draw(st.lists(element, min_size=n_rows * n_genes, max_size=n_rows * n_genes)),
                         dtype=dtype).reshape(n_rows, n_genes)
    elif family == "float":
        dtype = draw(st.sampled_from(FLOAT_DTYPES))
        element = st.one_of(st.integers(0, 30).map(float), st.just(0.0), st.sampled_from(SPECIAL_FLOATS),
                            st.floats(allow_nan=True, allow_infinity=True))
        with np.errstate(over="ignore", invalid="ignore"):
            dense = np.array(draw(st.lists(element, min_size=n_rows * n_genes, max_size=n_rows * n_genes)),
                             dtype=np.float64).astype(dtype).reshape(n_rows, n_genes)
    else:
        dtype = draw(st.sampled_from([bool, np.complex128, object, str]))
        dense = np.ones((n_rows, n_genes)).astype(dtype)
    layout = draw(st.sampled_from(["dense", "csr", "csc", "coo", "list"]))
    if layout == "list" or dense.dtype.kind in "OUSc" and layout != "dense":
        rows = dense.tolist()  # nested Python lists: the oracle sees what numpy makes of them, as a user would
        return rows, np.array(rows, dtype=dense.dtype if dense.dtype.kind != "O" else None).reshape(dense.shape)
    if layout == "dense" or dense.dtype == np.float16:  # scipy.sparse has no float16
        return dense, dense
    return getattr(sp, f"{layout}_matrix")(dense), dense


def _problems(dense: np.ndarray, names: list[tuple[str, int]]) -> dict[str, str]:
    """The reference decision: every reason this input must be refused → a word its message must contain."""
    problems: dict[str, str] = {}
    if dense.dtype.kind not in "iuf":
        # a list of Python strings/objects/bools is still not a count matrix
        return {"dtype": "real numbers"}
    values = dense.astype(np.float64) if dense.size else np.zeros((0, len(names)))
    if values.size:
        if not np.isfinite(values).all():
            problems["nonfinite"] = "NaN or infinite"
        finite = np.where(np.isfinite(values), values, 0.0)
        if (finite < 0).any():
            problems["negative"] = "negative"
        if (finite != np.round(finite)).any():
            problems["fraction"] = "not integers"
    stripped = [n.strip() for n, _ in names]
    if len(set(stripped)) < len(stripped):
        problems["duplicate"] = "more than once"
    positions = np.array([p for _, p in names])
    n_mapped = int((positions >= 0).sum())
    if n_mapped == 0 or n_mapped / len(names) < 0.3:
        problems["match"] = "matched the model vocabulary"
    if problems or not values.size:
        return problems
    with np.errstate(over="ignore"):
        totals = values[:, positions >= 0].sum(axis=1)
    if not np.isfinite(totals).all():
        problems["overflow"] = "too large"
    elif (totals <= 0).any():
        problems["empty"] = "no counts"
    return problems


def _reference_values(processor: TxFMProcessor, dense: np.ndarray, names: list[tuple[str, int]]):
    """Visible gene ids and ln(1 + L·x/Σx) values computed the plain way (float64, Python loops)."""
    positions = np.array([p for _, p in names])
    profiled = np.unique(positions[positions >= 0])
    values = dense.astype(np.float64)
    mapped = np.zeros((values.shape[0], len(profiled)))
    for column, position in enumerate(positions):
        if position >= 0:
            mapped[:, np.searchsorted(profiled, position)] += values[:, column]
    shown = processor.inference_columns(len(profiled))
    expected = np.log1p(L * (mapped / mapped.sum(axis=1, keepdims=True)))[:, shown]
    return profiled[shown], expected


def _assert_ours(error: Exception, problems: dict[str, str]) -> None:
    message = str(error)
    assert problems, f"valid input refused: {message}"
    assert any(word in message for word in problems.values()), (problems, message)


# ------------------------------------------------------------------------------------ processor


@FUZZ
@given(data=st.data())
def test_processor_gives_the_right_numbers_or_a_clear_input_error(processor, data):
    names = data.draw(st.lists(gene_tokens, min_size=1, max_size=12), label="genes")
    counts, dense = data.draw(count_matrices(len(names)), label="counts")
    problems = _problems(dense, names)
    if isinstance(counts, list) and not counts:
        problems = {"shape": "2-D"}  # [] is not a samples × genes matrix
    try:
        # an overflow or invalid operation inside our math is a bug, not noise (underflow to 0 is fine)
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            out = processor(counts, [n for n, _ in names], return_tensors="np")
    except TxFMInputError as error:
        CASES["processor/TxFMInputError"] += 1
        _assert_ours(error, problems)
        return
    CASES["processor/ok"] += 1
    assert not problems, f"accepted input that must be refused ({problems})"
    if dense.shape[0] == 0:
        return
    gene_ids, expected = _reference_values(processor, dense, names)
    assert (out["gene_ids"] == gene_ids).all()
    assert out["attention_mask"].all()
    np.testing.assert_allclose(out["values"], expected, rtol=2e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ embed


def _anndata(dense: np.ndarray, genes: list[str], sparse: bool) -> ad.AnnData:
    obs = pd.DataFrame({"donor": [f"d{i % 2}" for i in range(dense.shape[0])]},
                       index=[f"cell{i}" for i in range(dense.shape[0])])
    var = pd.DataFrame({"symbol": [f"S{i}" for i in range(len(genes))], "ensembl": genes},
                       index=[f"g{i}" for i in range(len(genes))])
    matrix = sp.csr_matrix(dense) if sparse else dense
    return ad.AnnData(X=matrix, obs=obs, var=var, layers={"counts": matrix.copy()})


@FUZZ
@given(data=st.data())
def test_embed_matches_the_direct_forward_pass_or_refuses_clearly(model, processor, data, tmp_path_factory):
    """In memory and from an .h5ad path, any chunk/batch size: the same numbers as one direct forward
    pass over the whole matrix, or a TxFMInputError (bad values, genes, obs/var columns, layers)."""
    # mostly well-formed gene lists here (the processor property covers bad ones): the point is the data path
    names = data.draw(st.one_of(st.lists(gene_tokens, min_size=1, max_size=10),
                                st.lists(good_gene_tokens, min_size=1, max_size=10, unique_by=lambda t: t[1])),
                      label="genes")
    n_rows = data.draw(st.integers(1, 7), label="rows")
    kind = data.draw(st.sampled_from(["counts", "counts", "counts", "negative", "fraction", "nan", "empty_row"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    dense = rng.poisson(3.0, size=(n_rows, len(names))).astype(np.float32)
    dense[:, 0] += 1  # most rows non-empty unless asked
    if kind == "negative":
        dense[rng.integers(n_rows), rng.integers(len(names))] = -2
    elif kind == "fraction":
        dense[rng.integers(n_rows), rng.integers(len(names))] = 0.25
    elif kind == "nan":
        dense[rng.integers(n_rows), rng.integers(len(names))] = np.nan
    elif kind == "empty_row":
        dense[rng.integers(n_rows)] = 0
    adata = _anndata(dense, [n for n, _ in names], sparse=data.draw(st.booleans(), label="sparse"))
    gene_col = data.draw(st.sampled_from(["ensembl", "ensembl", "missing_column"]), label="gene_col")
    layer = data.draw(st.sampled_from([None, "counts", "raw", "absent"]), label="layer")
    if layer == "raw" and data.draw(st.booleans(), label="has_raw"):
        adata.raw = adata.copy()
    as_file = data.draw(st.booleans(), label="from_file")
    chunk, batch = data.draw(st.integers(1, 8), label="chunk"), data.draw(st.integers(1, 8), label="batch")

    problems = _problems(dense, names)
    if gene_col == "missing_column":
        problems["gene_col"] = "no column"
    if layer == "absent" or (layer == "raw" and adata.raw is None):
        problems["layer"] = "layer" if not as_file else "matrix"
    source: object = adata
    if as_file:
        source = tmp_path_factory.mktemp("embed") / "input.h5ad"
        adata.write_h5ad(source)
    try:
        got = embed(source, model, processor=processor, gene_col=gene_col, layer=layer, chunk_size=chunk,
                    batch_size=batch, show_progress=False, key_added=None)
    except TxFMInputError as error:
        CASES["embed/TxFMInputError"] += 1
        _assert_ours(error, problems)
        return
    CASES["embed/ok"] += 1
    assert not problems, f"embedded input that must be refused ({problems})"
    inputs = processor(dense, [n for n, _ in names])
    with torch.inference_mode():
        expected = model.txfm(**inputs).embedding.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ damaged files

GOOD_GENES = VOCAB[:12]


def _good_counts(n_rows: int = 9) -> np.ndarray:
    rng = np.random.default_rng(7)
    counts = rng.poisson(2.0, size=(n_rows, len(GOOD_GENES))).astype(np.int64)
    counts[:, 0] += 1
    return counts


def _write_good_h5ad(path: Path, genes: list[str] = GOOD_GENES) -> Path:
    counts = _good_counts()
    obs = pd.DataFrame({"batch": ["a", "b", "c"] * 3}, index=[f"c{i}" for i in range(len(counts))])
    ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs,
               var=pd.DataFrame(index=genes)).write_h5ad(path)
    return path


def _damage_h5ad(path: Path, how: str, rng: np.random.Generator) -> None:
    """One way real files break: cut downloads, flipped bytes, and structurally inconsistent members."""
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: int(rng.integers(0, len(data)))])
        return
    if how == "flip_bytes":
        data = bytearray(path.read_bytes())
        for offset in rng.integers(0, len(data), size=int(rng.integers(1, 20))):
            data[offset] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        return
    with h5py.File(path, "r+") as handle:
        if how.startswith("delete:"):
            del handle[how.split(":", 1)[1]]
        elif how == "encoding":
            handle["X"].attrs["encoding-type"] = "mystery_matrix"
        elif how == "shape":
            handle["X"].attrs["shape"] = np.array([3, 40])
        elif how == "indptr_decreasing":
            indptr = handle["X/indptr"][:]
            handle["X/indptr"][:] = indptr[::-1]
        elif how == "indptr_beyond_data":
            indptr = handle["X/indptr"][:]
            indptr[-1] += 1000
            handle["X/indptr"][:] = indptr
        elif how == "indices_out_of_range":
            handle["X/indices"][0] = 10_000
        elif how == "indices_negative":
            handle["X/indices"][0] = -5
        elif how == "data_short":
            data = handle["X/data"][:]
            del handle["X/data"]
            handle["X/data"] = data[: len(data) // 2]
        elif how == "data_negative":
            handle["X/data"][0] = -3
        elif how == "data_nan":
            handle["X/data"][0] = np.nan
        elif how == "obs_rows":
            # obs loses rows (a half-rewritten file): obs and X disagree
            del handle["obs"]
            ad.io.write_elem(handle, "obs", pd.DataFrame(index=["only_one"]))
        elif how == "var_numeric_index":
            del handle["var"]
            ad.io.write_elem(handle, "var", pd.DataFrame(index=[str(i) for i in range(len(GOOD_GENES))]))
        else:
            raise AssertionError(how)


H5AD_DAMAGE = ["truncate", "flip_bytes", "delete:obs", "delete:var", "delete:X", "delete:X/indptr",
               "delete:X/indices", "delete:X/data", "encoding", "shape", "indptr_decreasing", "indptr_beyond_data",
               "indices_out_of_range", "indices_negative", "data_short", "data_negative", "data_nan", "obs_rows",
               "var_numeric_index"]
#: damage after which the file may still be readable and must then give exactly the original numbers
_UNSEEN = {"truncate"}


@FUZZ
@given(how=st.sampled_from(H5AD_DAMAGE), seed=st.integers(0, 2**16))
def test_embed_of_a_damaged_h5ad_refuses_naming_the_file(model, processor, how, seed, tmp_path_factory):
    folder = tmp_path_factory.mktemp("damaged")
    path = _write_good_h5ad(folder / "damaged.h5ad")
    reference = embed(path, model, processor=processor, show_progress=False)
    _damage_h5ad(path, how, np.random.default_rng(seed))
    try:
        got = embed(path, model, processor=processor, show_progress=False, chunk_size=4)
    except TxFMInputError as error:
        CASES["embed_damaged_h5ad/TxFMInputError"] += 1
        assert "damaged.h5ad" in str(error) or how in ("var_numeric_index",), str(error)
        return
    CASES["embed_damaged_h5ad/ok"] += 1
    if how == "flip_bytes":  # HDF5 has no checksums: a flipped count is undetectable, garbage structure is not
        assert got.shape == reference.shape and np.isfinite(got).all()
        return
    assert how in _UNSEEN, f"{how}: a damaged file was embedded"
    np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-6)


@FUZZ
@given(how=st.sampled_from(H5AD_DAMAGE), seed=st.integers(0, 2**16))
def test_reader_of_a_damaged_h5ad_raises_corpus_errors_naming_the_file(how, seed, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reader_h5ad")
    path = _write_good_h5ad(folder / "damaged.h5ad")
    _damage_h5ad(path, how, np.random.default_rng(seed))
    try:
        with open_reader(path) as reader:
            counts = to_counts(reader.read_rows(0, reader.n_samples), path)
            names = reader.gene_names
    except CorpusBuildError as error:
        CASES["reader_damaged_h5ad/CorpusBuildError"] += 1
        assert "damaged.h5ad" in str(error), str(error)
        return
    CASES["reader_damaged_h5ad/ok"] += 1
    if how == "flip_bytes":
        assert counts.dtype == np.int32 and counts.shape == (len(_good_counts()), len(names))
        assert (counts.data >= 0).all()
        return
    if how == "var_numeric_index":  # a valid file with useless gene names: the builder's gene mapping refuses it
        np.testing.assert_array_equal(counts.toarray(), _good_counts())
        return
    assert how in _UNSEEN, f"{how}: a damaged file was read"
    np.testing.assert_array_equal(counts.toarray(), _good_counts())


def _text_file(folder: Path, kind: str) -> tuple[Path, str]:
    counts = _good_counts()
    samples = [f"S{i}" for i in range(len(counts))]
    if kind == "gct":
        lines = ["#1.2", f"{len(GOOD_GENES)}\t{len(samples)}", "\t".join(["Name", "Description", *samples])]
        lines += ["\t".join([f"{g}.5", f"SYM{i}", *map(str, counts[:, i])]) for i, g in enumerate(GOOD_GENES)]
        path = folder / "damaged.gct"
    else:
        lines = [",".join(["", *GOOD_GENES])]
        lines += [",".join([s, *map(str, row)]) for s, row in zip(samples, counts)]
        path = folder / "damaged.csv"
    return path, "\n".join(lines) + "\n"


TEXT_DAMAGE = ["none", "truncate", "garbage_token", "drop_field", "nan", "negative", "huge", "fraction", "binary",
               "blank_header", "gct_dims"]


def _damage_text(text: str, how: str, rng: np.random.Generator) -> str | bytes:
    lines = text.splitlines()
    first_data = 3 if text.startswith("#1.2") else 1  # damage values, not the (legitimately free-form) labels
    row = int(rng.integers(first_data, len(lines)))
    sep = "\t" if "\t" in lines[-1] else ","
    fields = lines[-1 if row == 0 else row].split(sep)

    def replace_value(value: str) -> str:
        fields[-1 - int(rng.integers(0, len(fields) - 2))] = value
        return "\n".join(lines[:row] + [sep.join(fields)] + lines[row + 1:]) + "\n"

    if how == "none":
        return text
    if how == "truncate":
        return text[: int(rng.integers(0, len(text)))]
    if how == "garbage_token":
        return replace_value("x1!")
    if how == "drop_field":
        fields.pop()
        return "\n".join(lines[:row] + [sep.join(fields)] + lines[row + 1:]) + "\n"
    if how in ("nan", "negative", "huge", "fraction"):
        return replace_value({"nan": "nan", "negative": "-4", "huge": "1e400", "fraction": "0.5"}[how])
    if how == "binary":
        return bytes(rng.integers(0, 256, size=200, dtype=np.uint8))
    if how == "blank_header":
        return "\n" + text
    if how == "gct_dims":
        return text.replace(f"{len(GOOD_GENES)}\t", "twelve\t", 1) if text.startswith("#1.2") else text
    raise AssertionError(how)


@FUZZ
@given(kind=st.sampled_from(["gct", "csv"]), how=st.sampled_from(TEXT_DAMAGE), seed=st.integers(0, 2**16))
def test_text_readers_raise_corpus_errors_naming_the_file(kind, how, seed, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reader_text")
    path, text = _text_file(folder, kind)
    damaged = _damage_text(text, how, np.random.default_rng(seed))
    path.write_bytes(damaged if isinstance(damaged, bytes) else damaged.encode())
    try:
        with open_reader(path) as reader:
            counts = to_counts(reader.read_rows(0, reader.n_samples), path)
            names = reader.gene_names
    except CorpusBuildError as error:
        CASES[f"reader_{kind}/CorpusBuildError"] += 1
        assert path.name in str(error), str(error)
        return
    CASES[f"reader_{kind}/ok"] += 1
    original = _good_counts()
    if damaged == text or (how == "truncate" and kind == "gct" and damaged.rstrip("\n") == text.rstrip("\n")):
        np.testing.assert_array_equal(counts.toarray(), original)
        assert [re.sub(r"\.\d+$", "", n) for n in names] == GOOD_GENES
        return
    # what may still read: a CSV cut at a line end is a smaller, valid matrix (text has no row count);
    # then every row read must be an original row, unchanged
    assert how in ("truncate", "blank_header") and kind == "csv", f"{kind}/{how}: damaged text was read"
    assert counts.shape[0] <= original.shape[0]
    if how == "truncate":
        np.testing.assert_array_equal(counts.toarray(), original[: counts.shape[0], : counts.shape[1]])


#: flip_bytes seeds whose damaged file crashed libhdf5 itself (SIGSEGV reading attributes) before the probe
LIBHDF5_CRASHERS = [129]


@pytest.mark.parametrize("seed", LIBHDF5_CRASHERS)
def test_a_file_that_crashes_libhdf5_is_refused_not_fatal(model, processor, seed, tmp_path):
    """Probed in a child process first: the crash happens there and becomes our error naming the file."""
    from modeling_txfm.hdf5_probe import HDF5ProbeError, probe_hdf5

    path = _write_good_h5ad(tmp_path / "damaged.h5ad")
    probe_hdf5(path)  # an intact file passes the probe
    _damage_h5ad(path, "flip_bytes", np.random.default_rng(seed))
    try:
        probe_hdf5(path)  # (with other anndata/h5py versions the same seed may damage harmlessly)
    except HDF5ProbeError as error:
        assert "damaged.h5ad" in str(error) and "SIG" in str(error)
    with pytest.raises(TxFMInputError, match="damaged.h5ad"):
        embed(path, model, processor=processor, show_progress=False)
    with pytest.raises(CorpusBuildError, match="damaged.h5ad"):
        with open_reader(path) as reader:
            to_counts(reader.read_rows(0, reader.n_samples), path)
