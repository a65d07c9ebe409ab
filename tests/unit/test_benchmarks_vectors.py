"""The vector benchmark's own arithmetic (tests/benchmarks/vectors.py): the data has structure,
the exact neighbours are exact, recall counts right, and the COPY payload is PostgreSQL's
binary format with pgvector's wire layout."""

from __future__ import annotations

import struct

import numpy as np

from tests.benchmarks.vectors import binary_copy, exact_neighbours, recall_at_k, structured_vectors


def test_vectors_are_unit_length_float32_with_cluster_structure():
    data = structured_vectors(2000, 96)
    assert data.dtype == np.float32 and data.shape == (2000, 96)
    assert np.allclose(np.linalg.norm(data, axis=1), 1, atol=1e-5)
    similarity = data @ data.T
    np.fill_diagonal(similarity, -1)
    nearest = similarity.max(axis=1).mean()
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(2000, 96))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    noise_similarity = noise @ noise.T
    np.fill_diagonal(noise_similarity, -1)
    # Neighbours are far closer than in uniform noise of the same size.
    assert nearest > 0.7 > 0.5 > noise_similarity.max(axis=1).mean()


def test_exact_neighbours_match_a_plain_loop():
    data = structured_vectors(300, 16, seed=3)
    queries = structured_vectors(5, 16, seed=4)
    found = exact_neighbours(data, queries, k=10)
    for query, ids in zip(queries, found):
        distances = [1 - float(query @ row) for row in data]
        assert list(ids) == [index + 1 for index in np.argsort(distances, kind="stable")[:10]]


def test_recall_counts_the_shared_ids():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k([[4, 3, 2, 1], [8, 7, 6, 5]], exact) == 1.0
    assert recall_at_k([[1, 2, 9, 9], [5, 6, 0, 0]], exact) == 0.5
    assert recall_at_k([[], []], exact) == 0.0


def test_binary_copy_is_postgres_binary_format_with_pgvector_rows():
    data = np.array([[0.5, -1.25, 3.0], [1.0, 2.0, 4.0]], dtype=np.float32)
    payload = binary_copy(data)
    assert payload.startswith(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0))
    assert payload.endswith(struct.pack("!h", -1))
    row = payload[19 : 19 + 18 + 12]  # field count, id, vector header, 3 floats
    fields, id_len, row_id, vec_len, dims, unused = struct.unpack("!hiiihh", row[:18])
    assert (fields, id_len, row_id, vec_len, dims, unused) == (2, 4, 1, 4 + 12, 3, 0)
    assert struct.unpack("!3f", row[18:]) == (0.5, -1.25, 3.0)
    assert len(payload) == 19 + 2 * len(row) + 2
