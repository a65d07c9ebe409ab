"""Benchmark: HNSW build time, query throughput and recall@10, stock settings against the
toolkit's tuning, on one test host in one run (prints numbers; no asserts on speed).

    sudo .venv/bin/python -m tests.benchmarks.vectors [ROWS] [DIMENSIONS]   # default 100000 768

1. Boots a fresh Debian 12 test host and provisions it with ``pg_tuning = False``: PostgreSQL's
   packaged settings (shared_buffers 128MB, maintenance_work_mem 64MB, 2 parallel workers).
2. Loads ROWS vectors with structure, like real embeddings: a 64-dimensional latent space with
   100 clusters of varied spread, projected to DIMENSIONS, plus noise, normalised (cosine).
   400 held-out queries come from the same distribution; their exact 10 nearest neighbours
   are computed on the control machine (NumPy, the same float32 values PostgreSQL stores).
3. Stock: CREATE INDEX ... USING hnsw (m 16, ef_construction 64, pgvector's defaults), timed,
   with pgvector's notices captured; then the queries (hnsw.ef_search 40, the default): QPS
   over one connection, and recall@10 against the exact answer.
4. Re-runs deploy/postgres.py with tuning on (expected index: ROWS x DIMENSIONS), which writes
   conf.d/80-pgvector-tuning.conf and restarts; then the same index build and queries.
"""

from __future__ import annotations

import struct
import sys
import time

import numpy as np
import psycopg

from tests.benchmarks.common import fresh_hosts
from tests.hosts.lab import SUBNET
from tests.hosts.runner import deploy, write_inventory

QUERIES = 400
WARMUP = 100
K = 10
EF_SEARCH = 40
LATENT = 64
CLUSTERS = 100
PASSWORD = "bench-only-password"
SETTINGS = ("shared_buffers", "maintenance_work_mem", "max_parallel_maintenance_workers", "work_mem", "effective_cache_size")


def structured_vectors(rows: int, dimensions: int, seed: int = 7) -> np.ndarray:
    """Unit vectors with low intrinsic dimension and clusters of varied spread (float32)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, LATENT))
    spread = rng.uniform(0.2, 1.0, size=CLUSTERS)
    weights = rng.dirichlet(np.full(CLUSTERS, 2.0))
    labels = rng.choice(CLUSTERS, size=rows, p=weights)
    latent = centres[labels] + rng.normal(size=(rows, LATENT)) * spread[labels, None]
    projection = rng.normal(size=(LATENT, dimensions)) / np.sqrt(LATENT)
    vectors = latent @ projection + rng.normal(scale=0.05, size=(rows, dimensions))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def exact_neighbours(data: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Ids (1-based, as loaded) of the k nearest by cosine distance, by brute force."""
    similarity = queries @ data.T
    top = np.argpartition(-similarity, k, axis=1)[:, :k]
    order = np.take_along_axis(similarity, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1) + 1


def recall_at_k(found: list[list[int]], exact: np.ndarray) -> float:
    hits = sum(len(set(ids) & set(truth.tolist())) for ids, truth in zip(found, exact))
    return hits / (len(exact) * exact.shape[1])


def literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{value:.7g}" for value in vector) + "]"


def binary_copy(data: np.ndarray) -> bytes:
    """COPY ... (FORMAT binary) of (id, embedding) rows: pgvector's wire format is int16
    dimensions, int16 unused, then big-endian float4s."""
    rows, dimensions = data.shape
    row = np.dtype(
        [("fields", ">i2"), ("id_len", ">i4"), ("id", ">i4"), ("vec_len", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("values", ">f4", (dimensions,))]
    )
    table = np.zeros(rows, dtype=row)
    table["fields"], table["id_len"], table["id"] = 2, 4, np.arange(1, rows + 1)
    table["vec_len"], table["dim"], table["values"] = 4 + 4 * dimensions, dimensions, data
    return b"PGCOPY\n\xff\r\n\0" + struct.pack("!ii", 0, 0) + table.tobytes() + struct.pack("!h", -1)


def load(dsn: str, data: np.ndarray) -> float:
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS items")
        conn.execute(f"CREATE TABLE items (id integer PRIMARY KEY, embedding vector({data.shape[1]}) NOT NULL)")
        payload = binary_copy(data)
        with conn.cursor().copy("COPY items (id, embedding) FROM STDIN (FORMAT binary)") as copy:
            for start in range(0, len(payload), 1 << 20):
                copy.write(payload[start : start + (1 << 20)])
        conn.execute("VACUUM ANALYZE items")
    return time.monotonic() - started


def build_and_query(dsn: str, queries: np.ndarray, exact: np.ndarray) -> dict:
    notices: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(f"{diag.message_primary}"))
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in SETTINGS}
        conn.execute("DROP INDEX IF EXISTS items_embedding_idx")
        conn.execute("SELECT count(*) FROM items").fetchone()  # same warm heap for both builds
        started = time.monotonic()
        conn.execute(
            "CREATE INDEX items_embedding_idx ON items USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = 16, ef_construction = 64)"
        )
        build = time.monotonic() - started
        size = conn.execute("SELECT pg_size_pretty(pg_relation_size('items_embedding_idx'))").fetchone()[0]
        conn.execute(f"SET hnsw.ef_search = {EF_SEARCH}")
        sql = "SELECT id FROM items ORDER BY embedding <=> %s::vector LIMIT 10"
        plan = conn.execute("EXPLAIN " + sql, (literal(queries[0]),)).fetchall()
        assert any("items_embedding_idx" in row[0] for row in plan), plan
        texts = [literal(query) for query in queries]
        for text in texts[:WARMUP]:
            conn.execute(sql, (text,)).fetchall()
        started = time.monotonic()
        found = [[row[0] for row in conn.execute(sql, (text,)).fetchall()] for text in texts]
        seconds = time.monotonic() - started
    return {
        "settings": settings,
        "build": build,
        "index_size": size,
        "qps": len(texts) / seconds,
        "recall": recall_at_k(found, exact),
        "spilled": [notice for notice in notices if "no longer fits" in notice],
    }


def main() -> int:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    dimensions = int(sys.argv[2]) if len(sys.argv) > 2 else 768
    with fresh_hosts([("bench-vectors", 230)]) as (data, (host,), work):
        data.update(
            pg_app_user="bench",
            pg_app_password=PASSWORD,
            # The control machine reaches the host over the lab bridge.
            pg_docker_subnets=[SUBNET],
            pg_listen_addresses=[host.address],
            pg_hnsw_expected_vectors=rows,
            pg_hnsw_expected_dimensions=dimensions,
        )
        stock_inventory = write_inventory(work / "stock.py", [host.inventory_entry(**data, pg_tuning=False)])
        tuned_inventory = write_inventory(work / "tuned.py", [host.inventory_entry(**data)])
        dsn = f"host={host.address} dbname=bench user=bench password={PASSWORD} sslmode=require"  # beyond the host: TLS only

        provisioned = deploy(stock_inventory)
        assert provisioned.returncode == 0, provisioned.output
        print(f"generating {rows:,} x {dimensions} vectors and {QUERIES} queries ...", flush=True)
        everything = structured_vectors(rows + QUERIES, dimensions)
        vectors, queries = everything[:rows], everything[rows:]
        exact = exact_neighbours(vectors, queries)
        print(f"loaded in {load(dsn, vectors):.1f} s; building with stock settings ...", flush=True)
        stock = build_and_query(dsn, queries, exact)

        retuned = deploy(tuned_inventory)
        assert retuned.returncode == 0, retuned.output
        print(f"tuning applied by the toolkit ({retuned.seconds:.1f} s); building again ...", flush=True)
        tuned = build_and_query(dsn, queries, exact)

        report(rows, dimensions, stock, tuned)
        return 0


def report(rows: int, dimensions: int, stock: dict, tuned: dict) -> None:
    print(f"\nHNSW (m 16, ef_construction 64, cosine) over {rows:,} x {dimensions}, {QUERIES} queries, ef_search {EF_SEARCH}\n")
    print(f"{'':34} {'stock':>22} {'tuned':>22}")
    for name in SETTINGS:
        print(f"{name:34} {stock['settings'][name]:>22} {tuned['settings'][name]:>22}")
    print(f"{'build seconds':34} {stock['build']:>22.1f} {tuned['build']:>22.1f}")
    print(f"{'graph spilled out of memory':34} {('yes' if stock['spilled'] else 'no'):>22} {('yes' if tuned['spilled'] else 'no'):>22}")
    print(f"{'index size':34} {stock['index_size']:>22} {tuned['index_size']:>22}")
    print(f"{'queries per second (1 connection)':34} {stock['qps']:>22.0f} {tuned['qps']:>22.0f}")
    print(f"{'recall@10':34} {stock['recall']:>22.3f} {tuned['recall']:>22.3f}")
    for label, result in (("stock", stock), ("tuned", tuned)):
        for notice in result["spilled"]:
            print(f"{label}: NOTICE {notice}")
    print(f"\nbuild speed-up with tuning: {stock['build'] / tuned['build']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
