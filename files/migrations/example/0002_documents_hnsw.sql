-- Nearest neighbours by L2 distance: SELECT ... ORDER BY embedding <-> '[1,2,3]' LIMIT 10.
-- Building an index locks the table against writes while it runs: on a busy table, give up
-- quickly rather than queue behind (and in front of) the app's own queries.
SET LOCAL lock_timeout = '10s';
CREATE INDEX documents_embedding_hnsw ON documents USING hnsw (embedding vector_l2_ops);
